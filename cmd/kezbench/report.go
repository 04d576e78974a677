package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// printTable writes the report as a plain-text table.
func printTable(w io.Writer, rep *Report) {
	m := rep.Machine
	fmt.Fprintf(w, "kezbench %s — %d× %s, kernel %s, %s\n\n", rep.Label, m.CPUs, m.CPUModel, m.Kernel, m.GoVersion)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if len(rep.Results) > 0 {
		fmt.Fprintln(tw, "#\tscenario\taccepted\tmsg/s\tMiB/s\taccept p50/p90/p99/max ms\tdelivery p50/p90/p99/max ms\texactly once\terrors\tload\t")
		for _, r := range rep.Results {
			rate, mib := "-", "-"
			if r.MsgsPerSec > 0 {
				rate = fmt.Sprintf("%.0f", r.MsgsPerSec)
			}
			if r.MiBPerSec > 0 {
				mib = fmt.Sprintf("%.1f", r.MiBPerSec)
			}
			once := fmt.Sprintf("%d/%d", r.Delivery.ExactlyOnce, r.Delivery.Accepted)
			if !r.Delivery.OK() {
				once += " FAIL"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%.2f\t\n", r.ID, r.Name, r.Accepted, rate, mib,
				lat(r.Accept), lat(r.DeliveryLat), once, r.Errors, r.Load)
		}
	}
	_ = tw.Flush()
	for _, r := range rep.Results {
		switch {
		case r.Streams > 0 && r.RSSAfterKiB > 0:
			fmt.Fprintf(w, "\nscenario %s: %d streams over %s; server RSS %d → %d KiB: %.1f KiB per stream (anonymous memory %.1f KiB)\n",
				r.ID, r.Streams, r.StreamProtocol, r.RSSBeforeKiB, r.RSSAfterKiB, r.RSSPerStreamKiB, r.AnonPerStream)
		case r.Streams > 0:
			fmt.Fprintf(w, "\nscenario %s: %d streams (no -pid: RSS not measured)\n", r.ID, r.Streams)
		case r.ServerCPUus > 0:
			fmt.Fprintf(w, "\nscenario %s: CPU per accepted message: server %.0f µs, kezbench %.0f µs\n", r.ID, r.ServerCPUus, r.ToolCPUus)
		case r.TargetRate > 0:
			fmt.Fprintf(w, "\nscenario %s: target %d msg/s, tool started sends at most %.1f ms late\n", r.ID, r.TargetRate, r.MaxLagMs)
		}
		if r.Reconnects > 0 {
			fmt.Fprintf(w, "scenario %s: %d stream reconnects\n", r.ID, r.Reconnects)
		}
		if r.AlreadyStored > 0 {
			fmt.Fprintf(w, "scenario %s: %d sends were sent again after a lost answer and got their original receipt\n", r.ID, r.AlreadyStored)
		}
		if r.Delivery.EarlyDeliveries > 0 {
			fmt.Fprintf(w, "scenario %s: %d messages arrived on the stream before their sender read the 201 (latency counted as 0)\n", r.ID, r.Delivery.EarlyDeliveries)
		}
		if r.Note != "" {
			fmt.Fprintf(w, "scenario %s: %s\n", r.ID, r.Note)
		}
	}
	if rep.Scale != nil {
		printScale(w, rep.Scale)
	}
	if rep.Ratio > 0 {
		fmt.Fprintf(w, "\ngroup commit vs one transaction per message: %.1f×\n", rep.Ratio)
	}
	if len(rep.Problems) > 0 {
		fmt.Fprintf(w, "\nPROBLEMS:\n  %s\n", strings.Join(rep.Problems, "\n  "))
	}
}

func lat(l Latency) string {
	if l.N == 0 {
		return "-"
	}
	return fmt.Sprintf("%s/%s/%s/%s", num(l.P50), num(l.P90), num(l.P99), num(l.Max))
}

func num(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// printScale writes scenario 5's curves, one table each.
func printScale(w io.Writer, s *ScaleReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\nopen streams\tmsg/s\tserver/tool µs per msg\taccept p50/p90/p99/max ms\tdelivery p50/p90/p99/max ms\tserver RSS MiB\tok\tload\t")
	for _, p := range s.Streams {
		fmt.Fprintf(tw, "%d\t%.0f\t%.0f/%.0f\t%s\t%s\t%.0f\t%v\t%.2f\t\n", p.Streams, p.MsgsPerSec, p.ServerCPUus, p.ToolCPUus,
			lat(p.Accept), lat(p.Delivery), float64(p.RSSKiB)/1024, p.OK, p.Load)
	}
	fmt.Fprintln(tw, "\nregistered handles\tlookup p50/p90/p99/max ms\tload\t")
	for _, p := range s.Lookups {
		fmt.Fprintf(tw, "%d\t%s\t%.2f\t\n", p.Handles, lat(p.Latency), p.Load)
	}
	fmt.Fprintln(tw, "\nmessages in the inbox\tpage p50/p90/p99/max ms\tfill msg/s\tdatabase MiB\tload\t")
	for _, p := range s.Inbox {
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%.1f\t%.2f\t\n", p.Messages, lat(p.PageLatency), p.FillPerSec, float64(p.DBBytes)/(1<<20), p.Load)
	}
	fmt.Fprintln(tw, "\ndatabase\tMiB\tstartup ms\tRSS MiB\tanonymous MiB\tload\t")
	for _, p := range s.Startup {
		fmt.Fprintf(tw, "%s\t%.1f\t%.0f\t%.0f\t%.0f\t%.2f\t\n", p.Database, float64(p.DBBytes)/(1<<20), p.StartupMs, float64(p.RSSKiB)/1024, float64(p.AnonKiB)/1024, p.Load)
	}
	_ = tw.Flush()
	for _, n := range s.Notes {
		fmt.Fprintf(w, "scenario 5: %s\n", n)
	}
}
