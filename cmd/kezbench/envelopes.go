package main

import (
	"fmt"
	"strings"
	"sync"

	"github.com/kezchat/kez/kez"
)

// sealSized seals a real text message from sender to recipient whose
// envelope, as sent (compact JSON), is size bytes long, or size-1 when
// base64url cannot reach size exactly (it never yields lengths ≡ 1 mod 4).
func sealSized(link *kez.Link, fromAddr string, size int) ([]byte, error) {
	probe := func(textLen int) ([]byte, error) {
		msg := kez.NewTextMessage(fromAddr, strings.Repeat("x", textLen), 0)
		env, err := link.Seal(msg.Marshal())
		if err != nil {
			return nil, err
		}
		return env.AppendJSON(nil), nil
	}
	empty, err := probe(0)
	if err != nil {
		return nil, err
	}
	if len(empty) > size {
		return nil, fmt.Errorf("an envelope cannot be as small as %d bytes (an empty one is %d)", size, len(empty))
	}
	// Every plaintext byte adds 4/3 of a byte of base64url; start from that
	// estimate and correct by the measured difference a few times.
	textLen := (size - len(empty)) * 3 / 4
	var best []byte
	for range 8 {
		env, err := probe(textLen)
		if err != nil {
			return nil, err
		}
		switch d := size - len(env); {
		case d == 0:
			return env, nil
		case d > 0:
			if len(env) > len(best) {
				best = env
			}
			textLen += max(d*3/4, 1)
		default:
			textLen -= max(-d*3/4, 1)
		}
		if best != nil && size-len(best) == 1 {
			return best, nil
		}
	}
	if best == nil {
		return nil, fmt.Errorf("could not size an envelope to %d bytes", size)
	}
	return best, nil
}

// pool holds pre-sealed envelopes per recipient, so sealing (client CPU) is
// done before the clock starts and is not part of any measurement.
type pool struct {
	byRecipient [][][]byte // recipient index in the scenario → envelopes
}

// sealPool seals perLink envelopes of size bytes for each recipient i in
// users, from sender users[(i+1) % len(users)], with a few goroutines.
func sealPool(users []*user, server string, size, perLink int) (*pool, error) {
	p := &pool{byRecipient: make([][][]byte, len(users))}
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, to := range users {
		from := users[(i+1)%len(users)]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			envs, err := sealFor(from, to, server, size, perLink)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			p.byRecipient[i] = envs
		})
	}
	wg.Wait()
	return p, firstErr
}

func sealFor(from, to *user, server string, size, n int) ([][]byte, error) {
	link, err := from.keys.LinkTo(to.keys.Primary())
	if err != nil {
		return nil, err
	}
	out := make([][]byte, n)
	for k := range out {
		if out[k], err = sealSized(link, kez.Address(from.handle, server), size); err != nil {
			return nil, err
		}
	}
	return out, nil
}
