package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// openPTY opens a pseudo-terminal pair: what is written to tty is read
// from ptmx.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Skipf("unlockpt: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Skipf("ptsname: %v", e)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open the terminal: %v", err)
	}
	t.Cleanup(func() { tty.Close() })
	return ptmx, tty
}

// readTTY reads what the terminal shows of one write, bounded in time.
func readTTY(t *testing.T, ptmx *os.File) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 4096)
		n, _ := ptmx.Read(b)
		got <- string(b[:n])
	}()
	select {
	case s := <-got:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("nothing read from the terminal within 10s")
		return ""
	}
}

// TestConsoleLogColourOnTerminal: on a terminal, log.format: console is in
// colour, unless $NO_COLOR is set (https://no-color.org).
func TestConsoleLogColourOnTerminal(t *testing.T) {
	ptmx, tty := openPTY(t)
	t.Setenv("NO_COLOR", "")
	consoleLine(tty)
	if out := readTTY(t, ptmx); !strings.Contains(out, "\x1b[") {
		t.Errorf("terminal: %q, want colour", out)
	}
	t.Setenv("NO_COLOR", "1")
	consoleLine(tty)
	if out := readTTY(t, ptmx); !strings.Contains(out, "sluice is up") || strings.Contains(out, "\x1b[") {
		t.Errorf("terminal with NO_COLOR=1: %q, want no colour", out)
	}
}
