package caddymodule

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kezchat/kez/handlers"
)

// metrics are process-wide, so counts carry across reloads; each config
// registers them in its own Caddy metrics registry (served by Caddy's
// `metrics` handler or admin endpoint).
var metrics = struct {
	once         sync.Once
	accepted     prometheus.Counter
	bytes        prometheus.Counter
	registered   prometheus.Counter
	streams      prometheus.Gauge
	overflowed   prometheus.Counter
	rateLimited  *prometheus.CounterVec
	allCollected []prometheus.Collector
}{}

func initMetrics(registry *prometheus.Registry) (handlers.Counters, error) {
	const ns, sub = "caddy", "kez_chat"
	metrics.once.Do(func() {
		metrics.accepted = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "messages_accepted_total", Help: "Messages stored durably (201 answers to POST /v1/messages)."})
		metrics.bytes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "envelope_bytes_total", Help: "Bytes of envelopes stored."})
		metrics.registered = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "registrations_total", Help: "Handles registered."})
		metrics.streams = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "streams_open", Help: "Inbox streams (SSE) open now."})
		metrics.overflowed = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "streams_overflowed_total", Help: "Streams ended because the client read more slowly than its messages arrived; it resumes from storage."})
		metrics.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "rate_limited_total", Help: "Requests refused with 429, by limit."}, []string{"limit"})
		metrics.allCollected = []prometheus.Collector{metrics.accepted, metrics.bytes, metrics.registered, metrics.streams, metrics.overflowed, metrics.rateLimited}
	})
	if registry != nil {
		for _, c := range metrics.allCollected {
			// Several kez_chat handlers in one config register the same collectors.
			if err := registry.Register(c); err != nil && !errors.As(err, &prometheus.AlreadyRegisteredError{}) {
				return handlers.Counters{}, err
			}
		}
	}
	return handlers.Counters{
		MessageAccepted:  func(n int) { metrics.accepted.Inc(); metrics.bytes.Add(float64(n)) },
		Registered:       metrics.registered.Inc,
		StreamOpened:     metrics.streams.Inc,
		StreamClosed:     metrics.streams.Dec,
		StreamOverflowed: metrics.overflowed.Inc,
		RateLimited:      func(limit string) { metrics.rateLimited.WithLabelValues(limit).Inc() },
	}, nil
}
