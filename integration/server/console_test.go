package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/integration/stack"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// The console's tests: people sign in through a real OpenID Provider
// (stack.StartOIDC) in a real browser (headless Chromium) and act on a
// real latch server.

const (
	payPrefix = "spiffe://example.org/payments/"
	// consoleOperators give roles by the provider's groups claim.
	consoleOperators = `  - { group: approvers, roles: [approver, viewer] }
  - { group: viewers, roles: [viewer] }
  - { email: dave@example.org, roles: [revoker] }
`
	// consoleAgents are owned by bob, a person, by his email.
	consoleAgents = `  - id: ` + payPrefix + `*
    owner: bob@example.org
    templates: [payment]
`
)

var consoleTemplates = map[string]string{
	"payment.yaml": `name: payment
description: Pay one invoice from the ticket's account; two people approve.
backend: tokens
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
policy: |
  path "secret/data/tickets/{{ .params.ticket }}" { capabilities = ["read"] }
ttl: 5m
risk: critical
`,
}

// consoleEnv is a latch server with its console, the provider people sign
// in through, and a browser.
type consoleEnv struct {
	*latch
	op   *stack.OIDC
	url  string // the console: https://127.0.0.1:port
	b    *browser
	hook *webhookReceiver // gets the approval events
}

// startConsole starts the provider, then latch with oidc: and console:
// (extra adds console: keys, indented two spaces), then the browser.
func startConsole(t *testing.T, extra string) *consoleEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	listen := freePort(t)
	consoleURL := "https://" + listen
	op, err := stack.StartOIDC(ctx, dir, consoleURL+"/callback")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("OpenID Provider log:\n%s", tailOf(op.Log(), 4000))
		}
		op.Stop()
	})
	cert, key, err := op.LoopbackCert(dir, "console")
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`oidc:
  issuer: %s
  client_id: %s
  client_secret_file: %s
  scopes: [openid, email, profile, groups]
  ca_cert: %s
console:
  listen: %s
  url: %s
  tls_cert: %s
  tls_key: %s
%s
telemetry: { trace_url: "https://traces.example.org/trace/{trace_id}" }
`, op.Issuer, op.ClientID, op.SecretFile, op.CAFile, listen, consoleURL, cert, key, extra)
	hook := newWebhookReceiver(t)
	l := startLatchWith(t, latchOptions{Operators: consoleOperators, Agents: consoleAgents, Templates: consoleTemplates, Extra: cfg,
		Notify: hook.notifyYAML(t)})
	return &consoleEnv{latch: l, op: op, url: consoleURL, b: newBrowser(t), hook: hook}
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// approvalRequired matches the line `latch fetch --wait` prints on a 202.
var approvalRequired = regexp.MustCompile(`approval required: ([0-9A-Z]{26})`)

// waitingFetch starts `latch fetch --wait` for a payment as agent and
// returns the approval ID it waits on and a channel with its end.
func (e *consoleEnv) waitingFetch(ctx context.Context, t *testing.T, agent, ticket, reason string) (string, <-chan cliResult) {
	t.Helper()
	args := append([]string{"fetch", "--task", "payment", "--param", "ticket=" + ticket, "--reason", reason, "--wait", "120s", "-o", "json"},
		e.svidFiles(agent)...)
	cmd, stdout, stderr := e.command(ctx, []string{"TRACEPARENT=00-" + traceOf(agent) + "-00f067aa0ba902b7-01"}, args...)
	required := newLineMatch(approvalRequired)
	cmd.Stderr = io.MultiWriter(cmd.Stderr, required)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan cliResult, 1)
	go func() {
		err := cmd.Wait()
		r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
		if err != nil {
			r.code = cmd.ProcessState.ExitCode()
		}
		done <- r
	}()
	select {
	case m := <-required.found:
		return m[1], done
	case <-time.After(20 * time.Second):
		t.Fatalf("latch fetch --wait named no approval:\n%s", stderr.String())
		return "", nil
	}
}

// lineMatch is an io.Writer that reports on found, once, the submatches
// of the first line written to it that re matches: a process's output
// line as the signal a test waits for.
type lineMatch struct {
	re    *regexp.Regexp
	found chan []string
	mu    sync.Mutex
	line  []byte
	done  bool
}

func newLineMatch(re *regexp.Regexp) *lineMatch {
	return &lineMatch{re: re, found: make(chan []string, 1)}
}

func (m *lineMatch) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, b := range p {
		if b != '\n' {
			m.line = append(m.line, b)
			continue
		}
		if sub := m.re.FindStringSubmatch(string(m.line)); sub != nil && !m.done {
			m.done = true
			m.found <- sub
		}
		m.line = m.line[:0]
	}
	return len(p), nil
}

// traceOf is the trace ID an agent's waitingFetch runs in: its
// TRACEPARENT.
func traceOf(agent string) string {
	sum := sha256.Sum256([]byte(agent))
	return hex.EncodeToString(sum[:16])
}

// personID is the actor latch records for a person of the provider.
func (e *consoleEnv) personID(name string) string { return e.op.Issuer + "#" + stack.People[name].ID }

// approve reviews the approval page open in tb with a reason.
func (tb *tab) review(decision, reason string) {
	tb.b.t.Helper()
	tb.run(decision,
		chromedp.SendKeys(chromedp.CSS("#reason"), reason),
		chromedp.Click(chromedp.CSS("button."+decision)),
		chromedp.WaitVisible(chromedp.CSS("p.notice")))
}

// TestConsole_CriticalApprovedByTwoPeople: alice follows the link in the
// approval_requested webhook, signs in through the provider, sees the
// pending critical payment in the queue and on its page with its
// rendered policy and the agent's reason, and approves it; carol does
// the same in a browser of her own; the agent waiting in `latch fetch --wait` gets a
// working credential, and the audit names both by issuer and subject,
// with their emails.
func TestConsole_CriticalApprovedByTwoPeople(t *testing.T) {
	e := startConsole(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	agent := payPrefix + "invoice-bot"
	id, fetched := e.waitingFetch(ctx, t, agent, "42", "pay invoice 42 to ACME\nrequested by the month-end run")

	link := e.hook.first("approval_requested").URL
	if link != e.url+"/approvals/"+id {
		t.Fatalf("the approval_requested webhook links to %q, want the console page of %s", link, id)
	}
	alice := e.b.person("alice")
	alice.signIn(link, "alice")
	alice.run("open the queue", chromedp.Navigate(e.url+"/approvals"), chromedp.WaitVisible(chromedp.CSS("table.queue")))
	if got := alice.text("table.queue tbody"); !strings.Contains(got, id) || !strings.Contains(got, "payment") || !strings.Contains(got, "critical") {
		t.Fatalf("alice's queue does not list %s as a critical payment:\n%s", id, got)
	}
	t.Logf("approvals queue: %s", alice.screenshot("approvals-queue"))
	alice.run("open the approval", chromedp.Click(chromedp.CSS(`a[href="/approvals/`+id+`"]`)), chromedp.WaitVisible(chromedp.CSS("form.review")))
	page := alice.text("main")
	for _, want := range []string{`path "secret/data/tickets/42"`, "pay invoice 42 to ACME", "requested by the month-end run", "bob@example.org",
		agent, "0 of 2 approvals, 2 more needed", "Decision trace", "approval_required"} {
		if !strings.Contains(page, want) {
			t.Errorf("alice's approval page lacks %q:\n%s", want, page)
		}
	}
	if href := must(alice, "read the trace link", chromedp.Evaluate[string](`document.querySelector("a.trace").href`)); href != "https://traces.example.org/trace/"+traceOf(agent) {
		t.Errorf("the trace link is %q, want telemetry.trace_url with the TRACEPARENT's trace ID", href)
	}
	t.Logf("approval detail: %s", alice.screenshot("approval-detail"))
	alice.review("approve", "invoice 42 matches the purchase order")

	carol := e.b.person("carol")
	carol.signIn(e.url+"/approvals/"+id, "carol")
	if got := carol.text("main"); !strings.Contains(got, "1 of 2 approvals, 1 more needed") || !strings.Contains(got, "alice@example.org") {
		t.Fatalf("carol's page does not show alice's approval:\n%s", got)
	}
	carol.review("approve", "second pair of eyes: fine")

	var r cliResult
	select {
	case r = <-fetched:
	case <-ctx.Done():
		t.Fatal("latch fetch --wait did not end after two approvals")
	}
	got := parseFetch(t, r)
	if r.code != 0 || got.Lease.Agent != agent {
		t.Fatalf("latch fetch --wait: %s", r)
	}
	readsTicket(ctx, t, got.Secret["token"], "42", "43")

	audit, err := e.admin().Audit(ctx, api.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	reviewers := map[string]string{}
	for _, ev := range audit.Events {
		if (ev.Type == "approval_review" || ev.Type == "approval_approved") && ev.Details["approval_id"] == id {
			reviewers[ev.Actor] = ev.Details["actor_email"]
		}
		if (ev.Details["approval_id"] == id || ev.Lease == got.Lease.ID) && ev.Details["trace_id"] != traceOf(agent) {
			t.Errorf("%s event of the request has trace_id %q, want %s", ev.Type, ev.Details["trace_id"], traceOf(agent))
		}
	}
	if l, err := e.admin().Lease(ctx, got.Lease.ID); err != nil || l.TraceID != traceOf(agent) {
		t.Errorf("the lease's trace ID = %v %v, want %s from TRACEPARENT", l, err, traceOf(agent))
	}
	if reviewers[e.personID("alice")] != "alice@example.org" || reviewers[e.personID("carol")] != "carol@example.org" || len(reviewers) != 2 {
		t.Fatalf("audited reviewers = %v, want alice and carol by issuer#subject with their emails", reviewers)
	}
	if strings.Contains(alice.html(), got.Secret["token"]) {
		t.Fatal("the console shows the minted secret")
	}
}

// postReview is a forged review POST from tb's page, with the CSRF
// token given (the page's own, or none); it returns the status.
func (tb *tab) postReview(id, csrf string) int {
	tb.b.t.Helper()
	js := fmt.Sprintf(`fetch("/approvals/%s/review", {method: "POST", redirect: "manual",
		body: new URLSearchParams({csrf: %q, decision: "approve", reason: "forged"})}).then(r => r.status)`, url.PathEscape(id), csrf)
	return must(tb, "forge a review", chromedp.Evaluate[int](js, chromedp.EvalAwaitPromise))
}

// csrfToken is the CSRF token of the page's forms.
func (tb *tab) csrfToken() string {
	tb.b.t.Helper()
	return must(tb, "read the CSRF token", chromedp.Evaluate[string](`document.querySelector('input[name="csrf"]').value`))
}

// TestConsole_WhoMayAct: bob owns the agent and sees the request without
// an Approve button, and a forged approval with his session and token is
// refused; a POST without the CSRF token is refused; viewer sees the
// queue and no button, and is refused too; nothing of it counts.
func TestConsole_WhoMayAct(t *testing.T) {
	e := startConsole(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	id, _ := e.waitingFetch(ctx, t, payPrefix+"owned-bot", "43", "pay invoice 43")

	bob := e.b.person("bob")
	bob.signIn(e.url+"/approvals/"+id, "bob")
	if bob.has("button.approve") || !strings.Contains(bob.text("main"), "you own agent") {
		t.Fatalf("bob, the owner, has an Approve button or no reason why not:\n%s", bob.text("main"))
	}
	if !bob.has("button.deny") {
		t.Error("bob may deny (refusing is always easy) but has no Deny button")
	}
	if status := bob.postReview(id, bob.csrfToken()); status != 403 {
		t.Fatalf("bob's forged approval = %d, want 403", status)
	}
	if status := bob.postReview(id, ""); status != 403 {
		t.Fatalf("a review without the CSRF token = %d, want 403", status)
	}

	viewer := e.b.person("viewer")
	viewer.signIn(e.url+"/approvals", "viewer")
	if !strings.Contains(viewer.text("table.queue"), id) {
		t.Fatalf("viewer does not see %s in the queue", id)
	}
	viewer.run("open the approval", chromedp.Navigate(e.url+"/approvals/"+id), chromedp.WaitVisible(chromedp.CSS("h1")))
	if viewer.has("button.approve") || viewer.has("button.deny") {
		t.Fatal("viewer has review buttons")
	}
	if status := viewer.postReview(id, viewer.csrfToken()); status != 403 {
		t.Fatalf("viewer's forged approval = %d, want 403", status)
	}

	a, err := e.admin().Approval(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != "pending" || len(a.Reviews) != 0 {
		t.Fatalf("after refused reviews the approval is %s with %v", a.Status, a.Reviews)
	}
	audit, err := e.admin().Audit(ctx, api.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]int{}
	for _, ev := range audit.Events {
		if ev.Type == "violation" && len(ev.Reasons) > 0 {
			refused[ev.Actor+" "+ev.Reasons[0]]++
		}
	}
	for _, want := range []string{e.personID("bob") + " owner_approval", e.personID("bob") + " csrf_token", e.personID("viewer") + " missing_role"} {
		if refused[want] == 0 {
			t.Errorf("no violation audited for %s (violations: %v)", want, refused)
		}
	}
}

// TestConsole_SessionExpires: a session past its idle timeout is sent
// back to sign in.
func TestConsole_SessionExpires(t *testing.T) {
	e := startConsole(t, "  idle_timeout: 2s\n")
	dave := e.b.person("dave")
	dave.signIn(e.url+"/approvals", "dave")
	// The idle timeout is the signal here: only time passing expires a
	// session, so the test waits it out.
	time.Sleep(3 * time.Second)
	dave.run("reload", chromedp.Navigate(e.url+"/approvals"), chromedp.WaitVisible(chromedp.CSS("#username")))
}

// TestConsole_StepUp: approving a critical request with an
// authentication older than step_up_max_age sends alice back to the
// provider first; nothing is recorded until she has signed in again, and
// her approval goes through after.
func TestConsole_StepUp(t *testing.T) {
	e := startConsole(t, "  step_up_max_age: 2s\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id, _ := e.waitingFetch(ctx, t, payPrefix+"stepup-bot", "44", "pay invoice 44")
	alice := e.b.person("alice")
	alice.signIn(e.url+"/approvals/"+id, "alice")
	// The step-up age is what is tested: only time makes a sign-in old.
	time.Sleep(2500 * time.Millisecond)
	alice.run("reload", chromedp.Navigate(e.url+"/approvals/"+id), chromedp.WaitVisible(chromedp.CSS("form.review")))
	if !alice.has("p.stepup") {
		t.Fatal("the page does not say that approving needs a fresh sign-in")
	}
	alice.run("approve with an old sign-in",
		chromedp.SendKeys(chromedp.CSS("#reason"), "approve after step-up"),
		chromedp.Click(chromedp.CSS("button.approve")),
		chromedp.WaitVisible(chromedp.CSS("#username")))
	if a, err := e.admin().Approval(ctx, id); err != nil || len(a.Reviews) != 0 {
		t.Fatalf("before the step-up: %v %v, want no review recorded", a, err)
	}
	alice.providerLogin(stack.People["alice"])
	if alice.has("p.stepup") {
		t.Fatal("still asked for a step-up right after signing in again")
	}
	alice.review("approve", "approve after step-up")
	a, err := e.admin().Approval(ctx, id)
	if err != nil || len(a.Reviews) != 1 || a.Reviews[0].Approver != e.personID("alice") {
		t.Fatalf("after the step-up: %+v %v, want alice's approval", a, err)
	}
}

// tokenDies waits until Vault refuses token: revoked.
func tokenDies(ctx context.Context, t *testing.T, token string) {
	t.Helper()
	vc, err := setup(t).ClientWithToken(token)
	if err != nil {
		t.Fatal(err)
	}
	vaultenv.Eventually(t, 30*time.Second, func() error {
		if _, err := vc.Auth().Token().LookupSelfWithContext(ctx); vaultenv.StatusOf(err) != http.StatusForbidden {
			return fmt.Errorf("the token still answers: %v", err)
		}
		return nil
	})
}

// TestConsole_LiveAndRevoke: the live page shows a new issue event within
// a second of the fetch; dave (a revoker by his email) revokes the lease
// from the Leases page after a confirmation that shows the count, and
// the token stops working in Vault.
func TestConsole_LiveAndRevoke(t *testing.T) {
	e := startConsole(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := agentPrefix + "live-bot"
	viewer := e.b.person("viewer")
	viewer.signIn(e.url+"/live", "viewer")
	must(viewer, "wait for the stream", chromedp.Poll[bool](`document.getElementById("live-status").textContent.startsWith("Live")`))

	res := fetch(ctx, t, e.client(agent), "close-ticket", map[string]string{"ticket": "42"})
	fetched := time.Now()
	seen := fmt.Sprintf(`[...document.querySelectorAll("tr.event-issue")].some(r => r.textContent.includes(%q))`, agent)
	// Checked on every change of the page, for at most the second the
	// acceptance allows.
	if _, err := chromedp.Run(viewer.ctx, chromedp.Poll[bool](seen, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(time.Second))); err != nil {
		t.Fatalf("the live page shows no issue event for %s a second after the fetch (%v):\n%s", agent, err, viewer.text("table.events"))
	}
	t.Logf("issue event on the live page %v after the fetch returned", time.Since(fetched).Round(time.Millisecond))
	t.Logf("live page: %s", viewer.screenshot("live"))
	if viewer.has("a.revoke") {
		t.Error("viewer, who may not revoke, has Revoke links")
	}

	dave := e.b.person("dave")
	dave.signIn(e.url+"/leases?agent="+url.QueryEscape(agent), "dave")
	dave.run("revoke the lease", chromedp.Click(chromedp.CSS(`tr[data-lease="`+res.Lease.ID+`"] a.revoke`)),
		chromedp.WaitVisible(chromedp.CSS("button.confirm-revoke")))
	if h := dave.text("h1"); h != "Revoke 1 lease" {
		t.Fatalf("confirmation says %q, want the count: Revoke 1 lease", h)
	}
	dave.run("confirm", chromedp.SendKeys(chromedp.CSS("#reason"), "leaked in a log"), chromedp.Click(chromedp.CSS("button.confirm-revoke")),
		chromedp.WaitVisible(chromedp.CSS("p.notice")))
	tokenDies(ctx, t, res.Secret["token"])
	l, err := e.admin().Lease(ctx, res.Lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	if l.State != api.StateRevoked && l.State != api.StateRevoking {
		t.Fatalf("lease %s is %s after the console's revoke", l.ID, l.State)
	}
}

// TestConsole_LatchLogin: carol runs latch login; the browser leg (the
// provider's sign-in, then Allow) comes back to the CLI's loopback
// listener; then latch whoami, approval list and approval approve act
// as carol, by the session alone, and latch logout forgets it.
func TestConsole_LatchLogin(t *testing.T) {
	e := startConsole(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id, _ := e.waitingFetch(ctx, t, payPrefix+"login-bot", "45", "pay invoice 45")
	home := []string{"HOME=" + t.TempDir(), "XDG_CONFIG_HOME="}

	login, stdout, stderr := e.command(ctx, home, "login", "--console", e.url, "--ca", e.op.CAFile)
	address := newLineMatch(regexp.MustCompile(`^\s*(` + regexp.QuoteMeta(e.url+"/cli/login?") + `\S+)$`))
	login.Stderr = io.MultiWriter(login.Stderr, address)
	if err := login.Start(); err != nil {
		t.Fatal(err)
	}
	loginDone := make(chan error, 1)
	go func() { loginDone <- login.Wait() }()
	var start string
	select {
	case m := <-address.found:
		start = m[1]
	case <-time.After(20 * time.Second):
		t.Fatalf("latch login printed no sign-in address:\n%s", stderr.String())
	}
	carol := e.b.person("carol")
	carol.signIn(start, "carol")
	// The browser goes on to the CLI's loopback listener: latch login
	// ending signed in is the proof.
	carol.run("allow the CLI", chromedp.Click(chromedp.CSS("button.allow-cli")))
	select {
	case err := <-loginDone:
		if err != nil || !strings.Contains(stdout.String(), "signed in as carol@example.org") {
			t.Fatalf("latch login: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
		}
	case <-ctx.Done():
		t.Fatalf("latch login did not end:\n%s", stderr.String())
	}

	who := e.cli(ctx, home, "whoami")
	if who.code != 0 || !strings.Contains(who.stdout, e.personID("carol")+" (person) carol@example.org") || !strings.Contains(who.stdout, "approver") {
		t.Fatalf("latch whoami after login: %s", who)
	}
	if r := e.cli(ctx, home, "approval", "list"); r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Fatalf("latch approval list as carol: %s", r)
	}
	if r := e.cli(ctx, home, "approval", "approve", id, "--reason", "carol approves from the CLI"); r.code != 0 {
		t.Fatalf("latch approval approve as carol: %s", r)
	}
	a, err := e.admin().Approval(ctx, id)
	if err != nil || len(a.Reviews) != 1 || a.Reviews[0].Approver != e.personID("carol") || a.Reviews[0].Email != "carol@example.org" {
		t.Fatalf("after carol's CLI approval: %+v %v", a, err)
	}
	if r := e.cli(ctx, home, "logout"); r.code != 0 {
		t.Fatalf("latch logout: %s", r)
	}
	if r := e.cli(ctx, home, "whoami"); r.code == 0 {
		t.Fatalf("latch whoami after logout succeeded: %s", r)
	}
}

// fitsWidth fails when the page is wider than the window: nothing to
// scroll sideways for (tables scroll within their own box).
func (tb *tab) fitsWidth(page string) {
	tb.b.t.Helper()
	js := `[document.documentElement.scrollWidth, window.innerWidth]`
	w := must(tb, "measure "+page, chromedp.Evaluate[[]int](js))
	if w[0] > w[1] {
		tb.b.t.Errorf("%s: %s is %d px wide in a %d px window", tb.name, page, w[0], w[1])
	}
}

// TestConsole_AgentsReportAudit: dave (a revoker) quarantines an agent
// from the Agents page, which revokes its lease in Vault; alice (an
// approver) has no such buttons; viewer reads the report and the audit
// page, which says the chain verifies; the pages fit a phone's 390-pixel
// width and a 1280-pixel window.
func TestConsole_AgentsReportAudit(t *testing.T) {
	e := startConsole(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := agentPrefix + "ops-bot"
	res := fetch(ctx, t, e.client(agent), "close-ticket", map[string]string{"ticket": "42"})
	id, _ := e.waitingFetch(ctx, t, payPrefix+"phone-bot", "46", "pay invoice 46, a long reason that has to wrap on a phone screen")

	dave := e.b.person("dave")
	dave.signIn(e.url+"/agents", "dave")
	row := `tr[data-agent="` + agent + `"] `
	dave.run("quarantine", chromedp.SendKeys(chromedp.CSS(row+`input[name="reason"]`), "credential seen in a log"),
		chromedp.Click(chromedp.CSS(row+`button[value="quarantined"]`)), chromedp.WaitVisible(chromedp.CSS("p.notice")))
	if dave.has(row + `button[value="active"]`) {
		t.Error("dave, a revoker without the admin role, has a Resume button")
	}
	tokenDies(ctx, t, res.Secret["token"])
	agents, err := e.admin().Agents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents.Agents {
		if a.ID == agent && (a.State != "quarantined" || a.Actor != e.personID("dave")) {
			t.Fatalf("agent record after the console's quarantine: %+v", a)
		}
	}

	alice := e.b.person("alice")
	alice.signIn(e.url+"/agents", "alice")
	if alice.has("button.deny") || alice.has(`button[value="active"]`) {
		t.Error("alice, an approver, has agent buttons")
	}

	viewer := e.b.person("viewer")
	viewer.signIn(e.url+"/report", "viewer")
	if got := viewer.text("table.grants"); !strings.Contains(got, "close-ticket") || !strings.Contains(got, agentPrefix+"*") {
		t.Fatalf("the report lacks the close-ticket grant:\n%s", got)
	}
	viewer.run("audit", chromedp.Navigate(e.url+"/audit"), chromedp.WaitVisible(chromedp.CSS("table.events")))
	if !viewer.has("p.chain-ok") || !strings.Contains(viewer.text("table.events"), "quarantine") {
		t.Fatalf("the audit page does not show a verified chain with the quarantine:\n%s", viewer.text("main"))
	}
	for _, page := range []string{"/approvals", "/approvals/" + id, "/leases", "/agents", "/live", "/report", "/audit"} {
		viewer.run("open "+page, chromedp.Navigate(e.url+page), chromedp.WaitVisible(chromedp.CSS("main h1")))
		viewer.fitsWidth(page)
	}

	phone := e.b.personSized("carol-phone", 390, 844)
	phone.signIn(e.url+"/approvals", "carol")
	phone.fitsWidth("/approvals")
	t.Logf("approvals queue on a phone: %s", phone.screenshot("approvals-queue-phone"))
	phone.run("open the approval", chromedp.Navigate(e.url+"/approvals/"+id), chromedp.WaitVisible(chromedp.CSS("form.review")))
	phone.fitsWidth("/approvals/" + id)
	t.Logf("approval detail on a phone: %s", phone.screenshot("approval-detail-phone"))
}
