package netguard

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPublic(t *testing.T) {
	for addr, want := range map[string]bool{
		"142.250.74.106": true, "2a00:1450:4001:82b::200a": true, "17.253.144.10": true, "8.8.8.8": true,
		"127.0.0.1": false, "127.1.2.3": false, "::1": false, "10.0.0.1": false, "172.16.5.4": false, "192.168.1.1": false,
		"169.254.169.254": false, "fe80::1": false, "fc00::1": false, "fd12::1": false, "0.0.0.0": false, "::": false,
		"100.64.0.1": false, "224.0.0.1": false, "ff02::1": false, "255.255.255.255": false, "240.0.0.1": false,
		"::ffff:127.0.0.1": false, "::ffff:10.0.0.1": false, "64:ff9b::a00:1": false, "2002:7f00:1::": false,
		"198.18.0.1": false, "192.0.2.1": false, "2001:db8::1": false, "100::1": false,
	} {
		if got := Public(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Public(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestControl(t *testing.T) {
	if err := Control("tcp", "93.184.216.34:443", nil); err != nil {
		t.Errorf("a public address: %v", err)
	}
	for _, a := range []string{"127.0.0.1:443", "[::1]:443", "10.0.0.1:80", "[::ffff:169.254.169.254]:80", "not an address"} {
		if err := Control("tcp", a, nil); !errors.Is(err, ErrNotPublic) {
			t.Errorf("%s: %v", a, err)
		}
	}
}
