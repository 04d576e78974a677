package nats

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

var prefixes atomic.Int64

// opener opens stores on c, each with its own streams.
func opener(c *natstest.Cluster, replicas int) storagetest.Opener {
	return func(t *testing.T, notify storage.Notify) storage.Store {
		s, err := Open(Options{
			URLs:     c.URLs(),
			Prefix:   fmt.Sprintf("t%d", prefixes.Add(1)),
			Replicas: replicas,
			Timeout:  5 * time.Second,
			Notify:   notify,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, opener(natstest.Run(t), 1))
}

// The same suite on a 3-node cluster with replicated streams, where direct
// gets may be answered by followers.
func TestConformanceCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster")
	}
	storagetest.Run(t, opener(natstest.RunCluster(t, 3), 3))
}
