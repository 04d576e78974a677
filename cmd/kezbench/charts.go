package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/go-analyze/charts"
)

// chart is one SVG of a scale curve: one x label per point, one line per
// series, all in the same unit.
type chart struct {
	file, title, xTitle, yTitle string
	labels                      []string
	series                      []string
	values                      [][]float64 // values[series][point]
}

// writeCharts renders scenario 5's curves as SVG files in dir and returns
// their paths. A curve with no points is left out.
func writeCharts(dir string, s *ScaleReport) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []string
	for _, c := range scaleCharts(s) {
		if len(c.labels) == 0 {
			continue
		}
		p, err := charts.LineRender(c.values,
			charts.SVGOutputOptionFunc(),
			charts.DimensionsOptionFunc(900, 400),
			charts.TitleTextOptionFunc(c.title),
			// Every point labelled: the sizes are not evenly spaced.
			charts.XAxisOptionFunc(charts.XAxisOption{Labels: c.labels, Title: c.xTitle, LabelCount: len(c.labels)}),
			charts.YAxisOptionFunc(charts.YAxisOption{Title: c.yTitle, Min: charts.Ptr(0.0)}),
			charts.LegendOptionFunc(charts.LegendOption{SeriesNames: c.series, Offset: charts.OffsetStr{Top: charts.PositionBottom}}),
		)
		if err != nil {
			return out, fmt.Errorf("%s: %w", c.file, err)
		}
		raw, err := p.Bytes()
		if err != nil {
			return out, fmt.Errorf("%s: %w", c.file, err)
		}
		path := filepath.Join(dir, c.file)
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			return out, err
		}
		out = append(out, path)
	}
	return out, nil
}

// scaleCharts lays the curves out: x is the size that grows, labelled as
// measured (the points are not evenly spaced in value).
func scaleCharts(s *ScaleReport) []chart {
	var streams, lookups, inbox, startup chart
	streams = chart{file: "scale-streams-rate.svg", title: "Scenario 5: durable send rate vs open streams",
		xTitle: "open streams", yTitle: "msg/s", series: []string{"accepted msg/s (64 senders)"}, values: make([][]float64, 1)}
	streamsLat := chart{file: "scale-streams-latency.svg", title: "Scenario 5: accept latency vs open streams",
		xTitle: "open streams", yTitle: "ms", series: []string{"accept p50", "accept p99"}, values: make([][]float64, 2)}
	streamsCPU := chart{file: "scale-streams-cpu.svg", title: "Scenario 5: CPU per message vs open streams",
		xTitle: "open streams", yTitle: "µs", series: []string{"server", "kezbench"}, values: make([][]float64, 2)}
	streamsRSS := chart{file: "scale-streams-rss.svg", title: "Scenario 5: server RSS vs open streams",
		xTitle: "open streams", yTitle: "MiB", series: []string{"RSS"}, values: make([][]float64, 1)}
	for _, p := range s.Streams {
		streams.labels = append(streams.labels, count(p.Streams))
		streams.values[0] = append(streams.values[0], p.MsgsPerSec)
		streamsLat.values[0] = append(streamsLat.values[0], p.Accept.P50)
		streamsLat.values[1] = append(streamsLat.values[1], p.Accept.P99)
		streamsRSS.values[0] = append(streamsRSS.values[0], float64(p.RSSKiB)/1024)
		streamsCPU.values[0] = append(streamsCPU.values[0], p.ServerCPUus)
		streamsCPU.values[1] = append(streamsCPU.values[1], p.ToolCPUus)
	}
	streamsLat.labels, streamsRSS.labels, streamsCPU.labels = streams.labels, streams.labels, streams.labels
	lookups = latencyChart("scale-lookup.svg", "Scenario 5: lookup latency vs registered handles", "registered handles",
		"GET /v1/u/{handle} p50", len(s.Lookups), func(i int) (int, Latency) { return s.Lookups[i].Handles, s.Lookups[i].Latency })
	inbox = latencyChart("scale-inbox.svg", "Scenario 5: inbox page latency vs stored messages", "messages in the inbox",
		"page of 100, p50", len(s.Inbox), func(i int) (int, Latency) { return s.Inbox[i].Messages, s.Inbox[i].PageLatency })
	startup = chart{file: "scale-startup.svg", title: "Scenario 5: startup time vs database size",
		xTitle: "what the database holds, file MiB", yTitle: "ms", series: []string{"exec to first healthy answer"}, values: make([][]float64, 1)}
	startupRSS := chart{file: "scale-startup-rss.svg", title: "Scenario 5: RSS after startup vs database size",
		xTitle: "what the database holds, file MiB", yTitle: "MiB", series: []string{"RSS after a forced GC", "of which anonymous (heap, stacks)"}, values: make([][]float64, 2)}
	for _, p := range sortedStartup(s.Startup) {
		startup.labels = append(startup.labels, p.Label+", "+strconv.FormatFloat(float64(p.DBBytes)/(1<<20), 'f', 0, 64))
		startup.values[0] = append(startup.values[0], p.StartupMs)
		startupRSS.values[0] = append(startupRSS.values[0], float64(p.RSSKiB)/1024)
		startupRSS.values[1] = append(startupRSS.values[1], float64(p.AnonKiB)/1024)
	}
	startupRSS.labels = startup.labels
	return []chart{streams, streamsLat, streamsCPU, streamsRSS, lookups, inbox, startup, startupRSS}
}

// latencyChart is p50 and p99 of n points, point(i) giving the x value and
// its latencies.
func latencyChart(file, title, xTitle, p50 string, n int, point func(i int) (int, Latency)) chart {
	c := chart{file: file, title: title, xTitle: xTitle, yTitle: "ms", series: []string{p50, "p99"}, values: make([][]float64, 2)}
	for i := range n {
		x, l := point(i)
		c.labels = append(c.labels, count(x))
		c.values[0] = append(c.values[0], l.P50)
		c.values[1] = append(c.values[1], l.P99)
	}
	return c
}

// sortedStartup orders restarts by database size (the two curves' servers
// interleave).
func sortedStartup(ps []StartupPoint) []StartupPoint {
	out := slices.Clone(ps)
	slices.SortStableFunc(out, func(a, b StartupPoint) int { return cmp.Compare(a.DBBytes, b.DBBytes) })
	return out
}

// count writes 1000 as 1k and 1000000 as 1M.
func count(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return strconv.Itoa(n/1_000_000) + "M"
	case n >= 1000 && n%1000 == 0:
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}
