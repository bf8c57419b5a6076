package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// run runs the CLI in-process and returns stdout, stderr and the error main
// would print.
func runLatch(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run(append([]string{"latch"}, args...))
	return out.String(), errOut.String(), err
}

func TestCheck_Example(t *testing.T) {
	out, errOut, err := runLatch(t, "check", "--config", exampleConfigPath)
	if err != nil {
		t.Fatalf("err = %v\n%s", err, errOut)
	}
	if out != "ok: 6 templates, 4 agents\n" {
		t.Fatalf("stdout = %q", out)
	}
}

func TestCheck_ConfigFromEnv(t *testing.T) {
	t.Setenv("LATCH_CONFIG", exampleConfigPath)
	out, _, err := runLatch(t, "check")
	if err != nil || out != "ok: 6 templates, 4 agents\n" {
		t.Fatalf("out %q err %v", out, err)
	}
}

func TestCheck_PrintsEveryError(t *testing.T) {
	path := writeConfigDir(t, minimalConfigYAML+"servr: {}\n", map[string]string{
		"read.yaml": strings.Replace(minimalTemplateYAML, "ttl: 5m", "ttl: 5m\nmax_tll: 1h", 1),
	})
	out, errOut, err := runLatch(t, "check", "-c", path)
	if !errors.Is(err, errInvalidConfig) {
		t.Fatalf("err = %v, want errInvalidConfig", err)
	}
	if want := "invalid config: 2 errors in " + path; err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
	if out != "" {
		t.Fatalf("stdout = %q", out)
	}
	dir := strings.TrimSuffix(path, "latch.yaml")
	want := path + `:10:1: unknown key "servr"; allowed: server, spiffe, store, vault, backends, operators, agents, freeze_windows, risk_tiers, notify, approvals, auto_pause, refusals, audit, oidc, console, telemetry, templates_dir` + "\n" +
		dir + `templates/read.yaml:5:1: unknown key "max_tll"; allowed: name, description, backend, params, vars, policy, names, ttl, max_ttl, risk, escalate, windows, max_active` + "\n"
	if errOut != want {
		t.Fatalf("stderr =\n%s\nwant\n%s", errOut, want)
	}
	if exitCode(err) != 1 {
		t.Fatalf("exit code %d", exitCode(err))
	}
}

func TestCheck_MissingFile(t *testing.T) {
	_, _, err := runLatch(t, "check", "--config", "does-not-exist.yaml")
	if err == nil || !strings.Contains(err.Error(), "does-not-exist.yaml: no such file or directory") {
		t.Fatalf("err = %v", err)
	}
}

func TestCheck_RejectsArguments(t *testing.T) {
	// urfave/cli stops at the first argument, so "--config" here would be
	// an argument too; the error shows the right form.
	_, _, err := runLatch(t, "check", "latch.yaml", "--config", exampleConfigPath)
	want := `unexpected argument "latch.yaml": check takes only flags; usage: latch check --config FILE`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v", err)
	}
}

// TestCheck_RefusesBroadPatterns: a pattern that admits a character the
// parameter does not allow fails `latch check`, naming the template file,
// the parameter and the fix; with the opt-in the same pattern loads.
func TestCheck_RefusesBroadPatterns(t *testing.T) {
	withParam := func(param string) string {
		return strings.Replace(minimalTemplateYAML, "vars: { role: reader }", "params:\n  dir: "+param+"\nvars: { role: reader }", 1)
	}
	tests := []struct {
		name, param, want string
	}{
		{"ErrSlash", `{ pattern: "^[a-z/]+$" }`, `templates/read.yaml:4:19: params.dir.pattern: "^[a-z/]+$" admits '/' (U+002F), which params.dir does not allow; narrow it to the characters the value needs, such as [a-z0-9-] (letters, digits and . _ : @ -), or add allow: [slash] to the parameter`},
		{"ErrAnyChar", `{ pattern: "^.*$" }`, `templates/read.yaml:4:19: params.dir.pattern: "^.*$" admits any character`},
		{"ErrNegatedClass", `{ pattern: "^[^x]+$", allow: [slash] }`, `templates/read.yaml:4:19: params.dir.pattern: "^[^x]+$" admits '\x00' (U+0000), a control character`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfigDir(t, minimalConfigYAML, map[string]string{"read.yaml": withParam(tt.param)})
			out, errOut, err := runLatch(t, "check", "--config", path)
			if !errors.Is(err, errInvalidConfig) || out != "" {
				t.Fatalf("err = %v, stdout %q; want errInvalidConfig", err, out)
			}
			dir := strings.TrimSuffix(path, "latch.yaml")
			if !strings.HasPrefix(errOut, dir+tt.want) || strings.Count(errOut, "\n") != 1 {
				t.Fatalf("stderr =\n%s\nwant one line starting\n%s%s", errOut, dir, tt.want)
			}
		})
	}
	path := writeConfigDir(t, minimalConfigYAML, map[string]string{"read.yaml": withParam(`{ pattern: "^[a-z]+(/[a-z]+)*$", allow: [slash] }`)})
	if out, errOut, err := runLatch(t, "check", "--config", path); err != nil || out != "ok: 1 templates, 1 agents\n" {
		t.Fatalf("with allow: [slash]: out %q err %v\n%s", out, err, errOut)
	}
}
