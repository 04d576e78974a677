package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// server is a Caddy that kezbench starts itself (scenario 5): it restarts
// it to time startup against a database of a known size.
type server struct {
	bin, caddyfile string
	data           string // KEZBENCH_DATA: holds chat.db
	url            string // health checks go to url + /v1/healthz
	cmd            *exec.Cmd
	exited         chan struct{}
	log            *os.File
}

func newServer(bin, caddyfile, data, url string) (*server, error) {
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(caddyfile)
	if err != nil {
		return nil, err
	}
	return &server{bin: bin, caddyfile: abs, data: data, url: url}, nil
}

// dbBytes is the size of the database file.
func (s *server) dbBytes() int64 {
	fi, err := os.Stat(filepath.Join(s.data, "chat.db"))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// start runs Caddy and returns how long it took from exec to the first
// 200 of /v1/healthz (Caddy's own start, opening the store, binding).
func (s *server) start(ctx context.Context) (time.Duration, error) {
	if s.log == nil {
		f, err := os.OpenFile(filepath.Join(s.data, "caddy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return 0, err
		}
		s.log = f
	}
	cmd := exec.Command(s.bin, "run", "--config", s.caddyfile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "KEZBENCH_DATA="+s.data, "XDG_DATA_HOME="+filepath.Join(s.data, "xdg"))
	cmd.Stdout, cmd.Stderr = s.log, s.log
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.exited) }()
	hc := &http.Client{Timeout: time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/v1/healthz", nil)
		if err != nil {
			return 0, err
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(begin), nil
			}
		}
		select {
		case <-s.exited:
			return 0, fmt.Errorf("caddy exited while starting (see %s)", s.log.Name())
		case <-ctx.Done():
			s.stop()
			return 0, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Since(begin) > 10*time.Minute {
			s.stop()
			return 0, errors.New("caddy did not become healthy within 10 minutes")
		}
	}
}

func (s *server) pid() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// stop ends Caddy gracefully (SIGTERM; killed after 30 s).
func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// close stops Caddy and closes its log.
func (s *server) close() {
	s.stop()
	if s.log != nil {
		s.log.Close()
	}
}
