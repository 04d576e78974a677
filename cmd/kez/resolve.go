package main

import (
	"fmt"
	"strings"

	"github.com/kezchat/kez/client"
)

// resolveFlag collects --resolve S=URL (SPEC §8): where to reach server S
// instead of https://S, for test setups and private networks.
type resolveFlag []string

func (r *resolveFlag) String() string { return strings.Join(*r, ",") }

func (r *resolveFlag) Set(v string) error {
	if _, _, err := parseResolve(v); err != nil {
		return err
	}
	*r = append(*r, v)
	return nil
}

// parseResolve reads one "S=URL".
func parseResolve(v string) (server, base string, err error) {
	server, base, ok := strings.Cut(strings.TrimSpace(v), "=")
	server, base = strings.ToLower(strings.TrimSpace(server)), strings.TrimRight(strings.TrimSpace(base), "/")
	if !ok || !client.ValidServerName(server) || !(strings.HasPrefix(base, "http://") || strings.HasPrefix(base, "https://")) {
		return "", "", fmt.Errorf("--resolve %q: want SERVER=URL, e.g. two.example=http://127.0.0.1:8081", v)
	}
	return server, base, nil
}

// resolveMap is $KEZ_RESOLVE ("S=URL,S2=URL2") with the flags on top.
func resolveMap(envValue string, flags resolveFlag) (map[string]string, error) {
	out := map[string]string{}
	var items []string
	for _, it := range strings.Split(envValue, ",") {
		if strings.TrimSpace(it) != "" {
			items = append(items, it)
		}
	}
	for _, it := range append(items, flags...) {
		server, base, err := parseResolve(it)
		if err != nil {
			return nil, fmt.Errorf("KEZ_RESOLVE or %v", err)
		}
		out[server] = base
	}
	return out, nil
}
