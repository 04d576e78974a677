package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/pushtest"
	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/storage/nats/natstest"
)

// pushesSent is an instance's caddy_kez_chat_pushes_total{outcome="sent"}.
func pushesSent(t *testing.T, srv *testcaddy.Server) int {
	t.Helper()
	r := do(t, "GET", "http://"+srv.AdminAddr+"/metrics", "")
	m := regexp.MustCompile(`(?m)^caddy_kez_chat_pushes_total\{outcome="sent"\} (\d+)$`).FindSubmatch(r.body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// Two Caddy processes on one NATS share the VAPID key and the
// subscriptions, and a message is pushed once per device, by the instance
// that stored it: the other learns of it too (its live streams must),
// but does not push.
func TestPushTwoInstances(t *testing.T) {
	c := natstest.Run(t)
	service := pushtest.New(t)
	opts := testcaddy.Options{Storage: natsStorage(c),
		KezOptions: "push_allow_private_endpoints\n\t\tpush_interval 1s\n\t\tpush_contact https://ops.example.com/contact"}
	srv1, srv2 := testcaddy.Start(t, opts), testcaddy.Start(t, opts)
	alice := newUser("alice")
	want(t, "register", register(t, srv1, alice), 201, "")
	key1 := do(t, "GET", srv1.URL+"/v1/push/key", "")
	key2 := do(t, "GET", srv2.URL+"/v1/push/key", "")
	want(t, "key", key1, 200, "")
	if string(key1.body) != string(key2.body) {
		t.Fatalf("instances serve different keys: %s, %s", key1.body, key2.body)
	}
	phone, laptop := service.Subscribe("phone", pushtest.Behavior{}), service.Subscribe("laptop", pushtest.Behavior{})
	want(t, "subscribe on 1", signed(t, srv1.URL, alice, "PUT", "/v1/inbox/alice/push", pushtest.JSON(phone)), 204, "")
	want(t, "subscribe on 2", signed(t, srv2.URL, alice, "PUT", "/v1/inbox/alice/push", pushtest.JSON(laptop)), 204, "")

	var seqs []uint64
	for i, srv := range []*testcaddy.Server{srv1, srv2, srv1} {
		seqs = append(seqs, send(t, srv, "alice", fmt.Sprintf(`{"n":%d}`, i)))
		n := 2 * len(seqs)
		if got, ok := service.Wait(30*time.Second, func(p []pushtest.Push) bool { return len(p) >= n }); !ok {
			t.Fatalf("%d pushes after %d messages, want %d", len(got), len(seqs), n)
		}
	}
	var served struct{ Key string }
	if err := jsonUnmarshal(key1.body, &served); err != nil || served.Key == "" {
		t.Fatalf("key %s: %v", key1.body, err)
	}
	pushes := service.Pushes()
	if len(pushes) != 6 {
		t.Fatalf("%d pushes for 3 messages to 2 devices", len(pushes))
	}
	perDevice := map[string][]uint64{}
	for _, p := range pushes {
		if p.Err != nil {
			t.Fatalf("push refused by the push service: %v", p.Err)
		}
		if p.Claims.Sub != "https://ops.example.com/contact" || p.Key != served.Key {
			t.Fatalf("VAPID sub %q, key %s (served %s)", p.Claims.Sub, p.Key, served.Key)
		}
		seq, err := pushtest.Seq(p, "alice")
		if err != nil {
			t.Fatal(err)
		}
		perDevice[p.Device] = append(perDevice[p.Device], seq)
	}
	for _, d := range []string{"phone", "laptop"} {
		if fmt.Sprint(perDevice[d]) != fmt.Sprint(seqs) {
			t.Fatalf("%s got seqs %v, want %v", d, perDevice[d], seqs)
		}
	}
	if s1, s2 := pushesSent(t, srv1), pushesSent(t, srv2); s1 != 4 || s2 != 2 {
		t.Fatalf("pushes sent by instance 1: %d, by 2: %d; want 4 and 2 (each pushes what it stored)", s1, s2)
	}
}
