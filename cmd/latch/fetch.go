package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

// requestFlags are the flags of fetch and exec that make the request.
func requestFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "task", Aliases: []string{"t"}, Usage: "the task template `NAME`"},
		&cli.GenericFlag{Name: "param", Aliases: []string{"p"}, Usage: "a task parameter as `KEY=VALUE`; repeat for more", Value: &paramFlag{}},
		reasonFlag("why the agent needs the credential: audited, and shown to approvers"),
		&cli.DurationFlag{Name: "ttl", Usage: "lease `TTL` to ask for (default: the template's), clamped to its max TTL"},
		&cli.StringFlag{Name: "request-id", Usage: "idempotency `ID`: a retry with the same ID gets the same lease (without the secret again)"},
		&cli.StringFlag{Name: "approval-id", Usage: "pick up an approved request by its approval `ID`"},
		&cli.DurationFlag{Name: "wait", Usage: "when approval is needed, wait up to `DURATION` for it, then pick it up"},
		&cli.StringFlag{Name: "env-prefix", Value: "LATCH_", Usage: "`PREFIX` of the environment variable names"},
	}
}

const requestHelp = "The secret's fields become environment variables: LATCH_LEASE_ID and\n" +
	"LATCH_LEASE_EXPIRES_AT, then one variable per field, upper-cased and prefixed\n" +
	"(username → LATCH_USERNAME, private_key → LATCH_PRIVATE_KEY); --env-prefix\n" +
	"changes LATCH_. A W3C trace context in $TRACEPARENT ties the lease to the\n" +
	"agent's trace (its trace ID is recorded); exec's command inherits it.\n\n" +
	"A high-risk task waits for approval: latch prints the approval ID on stderr\n" +
	"and exits 4. With --wait D it waits on the approval (one long-poll at a\n" +
	"time, a progress line on stderr each) until it is granted (then picks it\n" +
	"up and proceeds), denied (exit 3), expired (exit 1), or D has passed\n" +
	"(exit 4); pick an approved request up later with --approval-id ID."

func fetchCommand() *cli.Command {
	return &cli.Command{
		Name:      "fetch",
		Usage:     "get credentials for a task and print them",
		UsageText: "latch fetch --task T [--param k=v]... --reason \"...\" [--ttl D] [--request-id ID] [--wait D] [-o env|json]",
		Description: "Asks latch for credentials for one task, as this workload's SPIFFE identity,\n" +
			"and prints the lease and the secret. -o env (the default) prints shell\n" +
			"export lines, shell-quoted, for eval:\n\n" +
			"  eval \"$(latch fetch --task nightly-report --param region=eu --reason 'nightly run')\"\n\n" +
			"-o json prints the whole answer: lease, secret, or the pending approval.\n" +
			"Release the lease when done (or use latch exec, which does).\n\n" +
			requestHelp + connHelp + " 4 still pending approval.",
		Flags:        append(append(requestFlags(), outputFlag("env", "json")), connFlags(false)...),
		OnUsageError: onUsageError,
		Action:       remote(runFetch),
	}
}

func execCommand() *cli.Command {
	return &cli.Command{
		Name:      "exec",
		Usage:     "run a command with a task's credentials in its environment, then release them",
		UsageText: "latch exec --task T [--param k=v]... --reason \"...\" [--ttl D] [--wait D] -- CMD [ARGS...]",
		Description: "Fetches credentials as latch fetch does, runs CMD with them in its\n" +
			"environment, forwards the signals latch receives (INT, TERM, HUP, QUIT,\n" +
			"USR1, USR2) to it, releases the lease when CMD ends (latch revokes the\n" +
			"credential), and exits with CMD's status (128+N when killed by signal N).\n" +
			"Put latch's flags before \"--\" and CMD after it.\n\n" +
			requestHelp + connHelp + " 4 still pending approval;\n" +
			"otherwise CMD's status (127 when CMD cannot be started).",
		Flags:        append(requestFlags(), connFlags(false)...),
		OnUsageError: onUsageError,
		Action:       runExec,
	}
}

// credentialsRequest builds the request of the flags.
func credentialsRequest(c *cli.Context) (api.CredentialsRequest, error) {
	req := api.CredentialsRequest{
		Task:       c.String("task"),
		Reason:     strings.TrimSpace(c.String("reason")),
		TTL:        api.Duration(c.Duration("ttl")),
		RequestID:  c.String("request-id"),
		ApprovalID: c.String("approval-id"),
	}
	if pf, ok := c.Generic("param").(*paramFlag); ok {
		req.Params = pf.m
	}
	// The agent's own trace (W3C Trace Context): its trace ID goes on the
	// lease, the approval and their audit events. exec's command inherits
	// TRACEPARENT with the rest of the environment.
	if tp := os.Getenv("TRACEPARENT"); tp != "" {
		tc, err := api.ParseTraceparent(tp)
		if err != nil {
			return req, usageErrorf("TRACEPARENT: %v", err)
		}
		req.TraceID = tc.TraceID
	}
	if req.Task == "" {
		return req, usageErrorf("--task is required")
	}
	if req.Reason == "" {
		return req, usageErrorf("--reason is required: say why the agent needs the credential, it is audited")
	}
	return req, nil
}

// errStillPending ends fetch with exit status 4.
type errStillPending struct{ approval *api.Approval }

func (e *errStillPending) Error() string {
	return fmt.Sprintf("approval %s is still pending; once approved, pick it up with the same request and --approval-id %s", e.approval.ID, e.approval.ID)
}

// obtain asks for credentials and, while approval is pending, waits up to
// --wait for it. It returns the pending answer with *errStillPending.
func obtain(c *cli.Context, cl *client.Client, req api.CredentialsRequest) (*api.CredentialsResponse, error) {
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	call := func() (*api.CredentialsResponse, error) {
		cctx, cancel := context.WithTimeout(ctx, remoteCallTimeout)
		defer cancel()
		return cl.Credentials(cctx, req)
	}
	res, err := call()
	if err != nil || res.Approval == nil {
		return res, err
	}
	pending := res.Approval
	fmt.Fprintf(c.App.ErrWriter, "latch: approval required: %s (task %s, tier %s, %d approval(s) needed, reviews due by %s)\n",
		pending.ID, pending.Task, dash(pending.Tier), pending.Required, fmtTime(pending.ExpiresAt))
	wait := c.Duration("wait")
	if wait <= 0 {
		return res, &errStillPending{approval: pending}
	}
	deadline := time.Now().Add(wait)
	for pending.Status == api.ApprovalPending {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return res, &errStillPending{approval: pending}
		}
		fmt.Fprintf(c.App.ErrWriter, "latch: waiting for approval %s: %d of %d approval(s) (%s left)\n",
			pending.ID, approvals(*pending), pending.Required, left.Round(time.Second))
		poll := min(left, api.MaxApprovalWait)
		wctx, cancel := context.WithTimeout(ctx, poll+remoteCallTimeout)
		a, err := cl.WaitApproval(wctx, pending.ID, poll)
		cancel()
		switch {
		case ctx.Err() != nil:
			return res, &errStillPending{approval: pending}
		case err != nil:
			return nil, err
		}
		pending = a
		res.Approval = a
	}
	// Approved, denied or expired: the pickup mints the secret, or says
	// why not. The request ID named the first request.
	req.ApprovalID, req.RequestID = pending.ID, ""
	return call()
}

func runFetch(c *cli.Context, args []string, connect connector) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q: fetch takes only flags", args[0])
	}
	req, err := credentialsRequest(c)
	if err != nil {
		return err
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	res, err := obtain(c, cl, req)
	var pending *errStillPending
	if errors.As(err, &pending) {
		if c.String("output") == "json" {
			if err := writeJSON(c.App.Writer, fetchOutput(res)); err != nil {
				return err
			}
		}
		fmt.Fprintln(c.App.ErrWriter, "latch: "+err.Error())
		return cli.Exit("", exitPending)
	}
	if err != nil {
		return err
	}
	if res.Replayed {
		fmt.Fprintf(c.App.ErrWriter, "latch: request %s was answered before: lease %s, and its secret is not sent again\n", req.RequestID, res.Lease.ID)
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, fetchOutput(res))
	}
	for _, kv := range secretEnv(c.String("env-prefix"), res) {
		fmt.Fprintf(c.App.Writer, "export %s=%s\n", kv[0], shellQuote(kv[1]))
	}
	return nil
}

// fetchJSON is a credentials answer with the secret in the clear:
// api.Secret prints as [redacted] on purpose, and here the caller asked
// for it.
type fetchJSON struct {
	Lease    *api.Lease        `json:"lease,omitempty"`
	Secret   map[string]string `json:"secret,omitempty"`
	Approval *api.Approval     `json:"approval,omitempty"`
	Replayed bool              `json:"replayed,omitempty"`
}

func fetchOutput(res *api.CredentialsResponse) fetchJSON {
	out := fetchJSON{Secret: map[string]string(res.Secret), Approval: res.Approval, Replayed: res.Replayed}
	if res.Lease.ID != "" {
		out.Lease = &res.Lease
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// secretEnv returns the environment variables of a lease and its secret,
// in a stable order.
func secretEnv(prefix string, res *api.CredentialsResponse) [][2]string {
	out := [][2]string{
		{prefix + "LEASE_ID", res.Lease.ID},
		{prefix + "LEASE_EXPIRES_AT", res.Lease.ExpiresAt.UTC().Format(time.RFC3339)},
	}
	for _, k := range sortedKeys(res.Secret) {
		out = append(out, [2]string{prefix + envName(k), res.Secret[k]})
	}
	return out
}

// envName makes a secret field's name a variable name: upper case, and
// anything but letters, digits and _ as _.
func envName(k string) string {
	b := []byte(strings.ToUpper(k))
	for i, ch := range b {
		if !(ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// shellQuote quotes s for POSIX shells.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func runExec(c *cli.Context) error {
	// urfave stopped at "--" or at CMD: everything left is the command.
	args := c.Args().Slice()
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		return fail(c, usageErrorf("no command to run: put it after \"--\""))
	}
	req, err := credentialsRequest(c)
	if err != nil {
		return fail(c, err)
	}
	cl, closeFn, err := dial(c)
	if err != nil {
		return fail(c, err)
	}
	defer closeFn()
	res, err := obtain(c, cl, req)
	if pending, ok := errors.AsType[*errStillPending](err); ok {
		fmt.Fprintln(c.App.ErrWriter, "latch: "+pending.Error())
		return cli.Exit("", exitPending)
	}
	if err != nil {
		return fail(c, err)
	}
	if res.Replayed {
		fmt.Fprintf(c.App.ErrWriter, "latch: request %s was answered before (lease %s): its secret is not sent again, so %s runs without it\n", req.RequestID, res.Lease.ID, args[0])
	}
	status := runChild(c, args, secretEnv(c.String("env-prefix"), res))
	if res.Lease.ID != "" {
		ctx, cancel := context.WithTimeout(context.Background(), remoteCallTimeout)
		err := cl.Release(ctx, res.Lease.ID)
		cancel()
		if ce, ok := errors.AsType[*client.Error](err); ok && ce.Code == api.CodeConflict {
			// Revoked or expired while the command ran (a quarantine, a
			// revoke): there is nothing left to release.
			fmt.Fprintf(c.App.ErrWriter, "latch: lease %s ended while the command ran (%s); nothing to release\n", res.Lease.ID, ce.Message)
			err = nil
		}
		if err != nil {
			fmt.Fprintf(c.App.ErrWriter, "latch: WARNING: release lease %s: %v; it stays valid until %s unless revoked (latch revoke %s --reason ...)\n",
				res.Lease.ID, err, fmtTime(res.Lease.ExpiresAt), res.Lease.ID)
			if status == 0 {
				status = exitError
			}
		}
	}
	if status != 0 {
		return cli.Exit("", status)
	}
	return nil
}

// forwardedSignals are passed on to the command exec runs.
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// runChild runs args with env added to latch's environment and returns its
// exit status.
func runChild(c *cli.Context, args []string, env [][2]string) int {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = os.Environ()
	for _, kv := range env {
		cmd.Env = append(cmd.Env, kv[0]+"="+kv[1])
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.App.Reader, c.App.Writer, c.App.ErrWriter
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(c.App.ErrWriter, "latch: run %s: %v\n", args[0], err)
		return 127
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	if err == nil {
		return 0
	}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	fmt.Fprintf(c.App.ErrWriter, "latch: %s: %v\n", args[0], err)
	return exitError
}
