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
	env, _, err := sizeText(link, fromAddr, size)
	return env, err
}

// sealText seals a text message of textLen bytes. Every plaintext of one
// sender with the same text length has the same length (the id is
// fixed-size and sent_at is 0), so its envelope has the same size.
func sealText(link *kez.Link, fromAddr string, textLen int) ([]byte, error) {
	msg := kez.NewTextMessage(fromAddr, strings.Repeat("x", textLen), 0)
	env, err := link.Seal(msg.Marshal())
	if err != nil {
		return nil, err
	}
	return env.AppendJSON(nil), nil
}

// sizeText finds the text length that makes an envelope of size bytes (or
// size-1), and returns one such envelope with it.
func sizeText(link *kez.Link, fromAddr string, size int) ([]byte, int, error) {
	empty, err := sealText(link, fromAddr, 0)
	if err != nil {
		return nil, 0, err
	}
	if len(empty) > size {
		return nil, 0, fmt.Errorf("an envelope cannot be as small as %d bytes (an empty one is %d)", size, len(empty))
	}
	// Every plaintext byte adds 4/3 of a byte of base64url; start from that
	// estimate and correct by the measured difference a few times.
	textLen := (size - len(empty)) * 3 / 4
	var best []byte
	bestLen := 0
	for range 8 {
		env, err := sealText(link, fromAddr, textLen)
		if err != nil {
			return nil, 0, err
		}
		switch d := size - len(env); {
		case d == 0:
			return env, textLen, nil
		case d > 0:
			if len(env) > len(best) {
				best, bestLen = env, textLen
			}
			textLen += max(d*3/4, 1)
		default:
			textLen -= max(-d*3/4, 1)
		}
		if best != nil && size-len(best) == 1 {
			return best, bestLen, nil
		}
	}
	if best == nil {
		return nil, 0, fmt.Errorf("could not size an envelope to %d bytes", size)
	}
	return best, bestLen, nil
}

// pool holds pre-sealed envelopes per recipient, so sealing (client CPU) is
// done before the clock starts and is not part of any measurement. Each is
// sent once: a v2 server stores an envelope once and answers it again with
// its original receipt (SPEC §2.5), so a repeated one would measure nothing.
type pool struct {
	byRecipient [][][]byte // recipient index in the scenario → envelopes
}

// sender is who sends to users[i] in a scenario: the next user.
func sender(users []*user, i int) *user { return users[(i+1)%len(users)] }

// sealPool seals perLink distinct envelopes of size bytes for each
// recipient i in users, from sender(users, i), with a few goroutines.
func sealPool(users []*user, server string, size, perLink int) (*pool, error) {
	p := &pool{byRecipient: make([][][]byte, len(users))}
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, to := range users {
		from := sender(users, i)
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
	addr := kez.Address(from.handle, server)
	first, textLen, err := sizeText(link, addr, size)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([][]byte, n)
	out[0] = first
	for k := 1; k < n; k++ {
		if out[k], err = sealText(link, addr, textLen); err != nil {
			return nil, err
		}
	}
	return out, nil
}
