package client

import "errors"

// remoteTrust is the TrustStore of one remote server: a view of
// TrustState.Remotes[server] inside the home store, so that every server's
// state is saved (and locked) with the rest, in the same file.
type remoteTrust struct {
	home   TrustStore
	server string
}

func (r remoteTrust) Load() (*TrustState, error) {
	st, err := r.home.Load()
	if err != nil {
		return nil, err
	}
	return r.pick(st), nil
}

func (r remoteTrust) Update(fn func(*TrustState) error) error {
	return r.home.Update(func(st *TrustState) error {
		sub := r.pick(st)
		if err := fn(sub); err != nil {
			return err
		}
		if st.Remotes == nil {
			st.Remotes = map[string]*TrustState{}
		}
		st.Remotes[r.server] = sub
		return nil
	})
}

// pick is the state of the server inside st, a fresh one if none is kept.
func (r remoteTrust) pick(st *TrustState) *TrustState {
	sub := st.Remotes[r.server]
	if sub == nil {
		sub = &TrustState{}
	}
	sub.Remotes, sub.Self = nil, nil // one level only; the user is not a user there
	sub.init()
	return sub
}

// errNested: a remote client does not reach further servers itself.
var errNested = errors.New("a remote server's client does not look up users of other servers")

// isRemoteStore reports whether s is a remote server's view.
func isRemoteStore(s TrustStore) bool {
	_, ok := s.(remoteTrust)
	return ok
}
