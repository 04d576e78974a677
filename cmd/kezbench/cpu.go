package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// procCPU is the user + system CPU time process pid has used so far.
func procCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: count fields after it.
	s := string(raw)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// selfCPU is the CPU time this process has used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter measures the CPU the server (when its pid is known) and this
// tool spend over a window.
type cpuMeter struct {
	pid          int
	server, tool time.Duration
	ok           bool
}

func startCPU(pid int) *cpuMeter {
	m := &cpuMeter{pid: pid, tool: selfCPU()}
	if pid > 0 {
		var err error
		m.server, err = procCPU(pid)
		m.ok = err == nil
	}
	return m
}

// perMessage returns the server's and the tool's CPU per message since
// startCPU, in µs (the server's 0 when its pid is unknown).
func (m *cpuMeter) perMessage(n int) (server, tool float64) {
	if n <= 0 {
		return 0, 0
	}
	tool = float64((selfCPU() - m.tool).Microseconds()) / float64(n)
	if m.ok {
		if now, err := procCPU(m.pid); err == nil {
			server = float64((now - m.server).Microseconds()) / float64(n)
		}
	}
	return server, tool
}
