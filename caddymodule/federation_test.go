package caddymodule

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestFederationOptions(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`kez_chat {
		server kez.lat
		federation deny spam.example bad.example
		federation_resolve one.test http://127.0.0.1:8081
		federation_resolve two.test https://10.0.0.2/kez
		federation_rate 10/1m
		federation_cache 2m
		federation_allow_private
		federation_repin forked.example
		federation_repin other.example
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Handler{Server: "kez.lat", Federation: "deny", FederationServers: []string{"spam.example", "bad.example"},
		FederationResolve: map[string]string{"one.test": "http://127.0.0.1:8081", "two.test": "https://10.0.0.2/kez"},
		FederationRate:    "10/1m", FederationCache: caddy.Duration(2 * time.Minute), FederationAllowPrivate: true,
		FederationRepin: []string{"forked.example", "other.example"}}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("got  %+v\nwant %+v", h, want)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	// The JSON form round-trips (caddy adapt writes it, caddy run reads it).
	raw, _ := json.Marshal(h)
	var back Handler
	if err := json.Unmarshal(raw, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Fatalf("round trip %s: %+v, %v", raw, back, err)
	}
	v := h.federationVerifier(nil)
	if v == nil || v.Policy().Admits("spam.example") || !v.Policy().Admits("good.example") || v.Resolve()["two.test"] != "https://10.0.0.2/kez" {
		t.Fatalf("verifier %+v", v)
	}
	h.Federation, h.FederationServers = "off", nil
	if h.federationVerifier(nil) != nil {
		t.Fatal("federation off still makes a verifier")
	}
}

func TestFederationOptionErrors(t *testing.T) {
	cases := map[string]string{
		"federation":                      "federation needs a mode",
		"federation sometimes":            "must be open, off",
		"federation open one.example":     "takes no server names",
		"federation allow":                "needs at least one server name",
		"federation deny Bad_Name!":       "not a server name",
		"federation open\nfederation off": "federation already specified",
		"federation_resolve one.test":     "takes a server name and its API base URL",
		"federation_resolve a.test http://x\nfederation_resolve a.test http://y": "federation_resolve a.test already specified",
		"federation_rate lots":         "federation_rate",
		"federation_cache never":       "federation_cache",
		"federation_allow_private yes": "takes no value",
		"federation_repin":             "needs at least one server name",
	}
	wantBlockErrors(t, cases)
	for _, h := range []Handler{
		{Server: "kez.lat", Federation: "maybe"},
		{Server: "kez.lat", FederationServers: []string{"a.example"}},
		{Server: "kez.lat", FederationResolve: map[string]string{"One.Test": "http://127.0.0.1:1"}},
		{Server: "kez.lat", FederationResolve: map[string]string{"one.test": "127.0.0.1:1"}},
		{Server: "kez.lat", FederationResolve: map[string]string{"one.test": "http://u:p@127.0.0.1:1"}},
		{Server: "kez.lat", FederationRepin: []string{"a b"}},
		{Server: "kez.lat", FederationRate: "fast"},
	} {
		if err := h.Validate(); err == nil {
			t.Errorf("%+v validated", h)
		}
	}
}
