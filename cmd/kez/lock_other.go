//go:build !unix

package main

import (
	"errors"
	"os"
	"time"
)

// lockFile takes a lock by creating path exclusively, waiting up to 10 s
// for another process to let go; a lock older than a minute is taken over
// (its process died).
func lockFile(path string) (func(), error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			f.Close()
			return func() { os.Remove(path) }, nil
		}
		if info, serr := os.Stat(path); serr == nil && time.Since(info.ModTime()) > time.Minute {
			os.Remove(path)
			continue
		}
		if time.Now().After(deadline) {
			return nil, errors.New("another kez process holds " + path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
