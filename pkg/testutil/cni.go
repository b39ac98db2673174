package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Call is one plugin invocation as a runtime makes it.
type Call struct {
	Command, ContainerID, Netns, IfName, Args, Path string
	Conf                                            []byte
	Timeout                                         time.Duration
	Wrap                                            []string // command prefix, e.g. ip netns exec HOST
	Env                                             []string // extra environment
	// KillAfter > 0 sends the process SIGKILL that long after it started
	// (a runtime's process killed at a random point of the verb). Wrap
	// must exec in place (ip netns exec does) for the signal to reach the
	// plugin itself.
	KillAfter time.Duration
}

// Outcome is what the runtime sees.
type Outcome struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
	ErrCode  int    // CNI error object's code, 0 when none
	ErrMsg   string // its message
	Took     time.Duration
	Killed   bool // the process died of KillAfter's SIGKILL before it finished
}

// Run executes bin as a CNI plugin.
func Run(bin string, c Call) Outcome {
	to := c.Timeout
	if to == 0 {
		to = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), to)
	defer cancel()
	argv := append(append([]string{}, c.Wrap...), bin)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	path := c.Path
	if path == "" {
		path = "/usr/lib/cni"
	}
	ifn := c.IfName
	if ifn == "" {
		ifn = "eth0"
	}
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+c.Command, "CNI_CONTAINERID="+c.ContainerID, "CNI_NETNS="+c.Netns,
		"CNI_IFNAME="+ifn, "CNI_ARGS="+c.Args, "CNI_PATH="+path)
	cmd.Env = append(cmd.Env, c.Env...)
	cmd.Stdin = bytes.NewReader(c.Conf)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		if c.KillAfter > 0 {
			kill := time.AfterFunc(c.KillAfter, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
			defer kill.Stop()
		}
		err = cmd.Wait()
	}
	o := Outcome{Stdout: out.Bytes(), Stderr: errb.Bytes(), Took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		o.ExitCode = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			o.Killed = true
		}
	} else if err != nil {
		o.ExitCode = -1
	}
	if o.ExitCode != 0 {
		var e struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		}
		if json.Unmarshal(o.Stdout, &e) == nil {
			o.ErrCode, o.ErrMsg = e.Code, e.Msg
		}
	}
	return o
}
