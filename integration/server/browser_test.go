package server

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/latchbroker/latch/integration/stack"
)

// browser starts headless Chromium (Debian's, driven with chromedp), one
// process per person: their own cookies, as in a browser of their own.
// (chromedp's browser contexts, WithNewBrowserContext, would be lighter,
// but with chromedp v0.23.1 no query answers in them.)
type browser struct {
	t    *testing.T
	opts []chromedp.ExecAllocatorOption
	out  string // where screenshots and failure pages go
}

// newBrowser finds Chromium for the test. Failed tests leave each
// person's last page (screenshot and HTML) under
// test-output/console/<test>/.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed: run make tools (it runs apt-get install chromium): %v", err)
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "test-output", "console", t.Name())
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(1280, 800),
		// The console's and the provider's certificates come from the
		// test's own CA; latch itself verifies the provider's.
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true))
	return &browser{t: t, opts: opts, out: out}
}

// person starts a browser for one person; it ends with the test.
func (b *browser) person(name string) *tab {
	b.t.Helper()
	return b.personSized(name, 1280, 800)
}

// personSized is person with a window of width × height pixels.
func (b *browser) personSized(name string, width, height int) *tab {
	b.t.Helper()
	opts := append(slices.Clone(b.opts), chromedp.UserDataDir(b.t.TempDir()), chromedp.WindowSize(width, height))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	tb := &tab{b: b, name: name, ctx: ctx}
	b.t.Cleanup(func() {
		if b.t.Failed() {
			tb.keep("failed")
		}
		cancel()
		cancelAlloc()
	})
	// The viewport, emulated: headless Chromium keeps a window at least
	// 500 pixels wide.
	var mobile []chromedp.EmulateViewportOption
	if width < 600 {
		mobile = append(mobile, chromedp.EmulateMobile)
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(int64(width), int64(height), mobile...)); err != nil {
		b.t.Fatalf("start chromium for %s: %v", name, err)
	}
	return tb
}

// tab is one person's browser context.
type tab struct {
	b    *browser
	name string
	ctx  context.Context
}

// run runs actions with a deadline, failing the test (with the page kept)
// when they fail.
func (tb *tab) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	tb.b.t.Helper()
	must(tb, what, chromedp.Steps(steps...))
}

// must runs one action with a deadline and returns its value, failing
// the test (the page kept) when it fails.
func must[T any](tb *tab, what string, a chromedp.Action[T]) T {
	tb.b.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		tb.b.t.Fatalf("%s: %s: %v (page: %s)", tb.name, what, err, tb.location())
	}
	return v
}

func (tb *tab) location() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	return loc
}

// text is the visible text of the first element matching the CSS
// selector sel.
func (tb *tab) text(sel string) string {
	tb.b.t.Helper()
	return must(tb, "read "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// html is the page's HTML.
func (tb *tab) html() string {
	tb.b.t.Helper()
	return must(tb, "read the page", chromedp.OuterHTML(chromedp.CSS("html")))
}

// has reports whether an element matches the CSS selector sel now.
func (tb *tab) has(sel string) bool {
	tb.b.t.Helper()
	return must(tb, "count "+sel, chromedp.Evaluate[int](fmt.Sprintf("document.querySelectorAll(%q).length", sel))) > 0
}

// signIn opens url, which sends a person without a session to the
// provider, signs in there as name, and waits for the console page.
func (tb *tab) signIn(url, name string) {
	tb.b.t.Helper()
	p := stack.People[name]
	tb.run("open "+url, chromedp.Navigate(url))
	tb.providerLogin(p)
}

// providerLogin fills in the provider's login page and waits until the
// console shows a page again.
func (tb *tab) providerLogin(p stack.Person) {
	tb.b.t.Helper()
	tb.run("sign in at the provider as "+p.Username,
		chromedp.WaitVisible(chromedp.CSS("#username")),
		chromedp.SendKeys(chromedp.CSS("#username"), p.Username),
		chromedp.SendKeys(chromedp.CSS("#password"), p.Password),
		chromedp.Click(chromedp.CSS(`button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("header .who")))
}

// screenshot saves the page as out/<name>.png.
func (tb *tab) screenshot(name string) string {
	tb.b.t.Helper()
	png := must(tb, "screenshot", chromedp.FullScreenshot(100))
	path := filepath.Join(tb.b.out, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.b.t.Fatal(err)
	}
	return path
}

// keep saves the page (screenshot and HTML) after a failure.
func (tb *tab) keep(why string) {
	ctx, cancel := context.WithTimeout(tb.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	html, herr := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
	if err != nil || herr != nil {
		tb.b.t.Logf("%s: cannot keep the page: %v %v", tb.name, err, herr)
		return
	}
	base := filepath.Join(tb.b.out, strings.ReplaceAll(tb.name, "/", "_")+"-"+why)
	_ = os.WriteFile(base+".png", png, 0o644)
	_ = os.WriteFile(base+".html", []byte(html), 0o644)
	tb.b.t.Logf("%s's last page: %s.png and .html", tb.name, base)
}
