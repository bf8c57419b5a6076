package templates

import (
	"os"
	"path/filepath"
	"testing"
)

// testBackends are the backends the testdata templates use.
var testBackends = map[string]Backend{
	"tokens": {Type: BackendVaultToken},
	"app-db": {Type: BackendVaultLease, Path: "database/creds/{{ .vars.role }}"},
	"certs":  {Type: BackendVaultPKI},
}

func readTestPolicy(t testing.TB) PolicyConfig {
	t.Helper()
	data, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := ParsePolicy("testdata/policy.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

func readTestTemplates(t testing.TB) []File {
	t.Helper()
	files, err := ReadDir("testdata/templates")
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// loadTestPolicy loads testdata/policy.yaml and testdata/templates.
func loadTestPolicy(t testing.TB) *Policy {
	t.Helper()
	p, err := Load(Source{Policy: readTestPolicy(t), Templates: readTestTemplates(t), Backends: testBackends})
	if err != nil {
		t.Fatalf("load testdata: %v", err)
	}
	return p
}

// minimalTemplate is the one template the policy-* invalid files may grant:
// it needs no windows, so a policy file's own error is the only one.
var minimalTemplate = File{Name: "minimal/nightly-report.yaml", Data: []byte(`name: nightly-report
backend: tokens
policy: 'path "secret/data/reports" { capabilities = ["read"] }'
ttl: 5m
risk: low
`)}

// loadInvalid loads one file of testdata/invalid: policy-*.yaml as the
// policy sections (with minimalTemplate), any other as a template next to the
// valid testdata templates.
func loadInvalid(t testing.TB, name string) error {
	t.Helper()
	path := filepath.Join("testdata/invalid", name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(name)[:7] == "policy-" {
		pc, err := ParsePolicy(path, data)
		if err != nil {
			return err
		}
		_, err = Load(Source{Policy: pc, Templates: []File{minimalTemplate}, Backends: testBackends})
		return err
	}
	files := append(readTestTemplates(t), File{Name: path, Data: data})
	_, err = Load(Source{Policy: readTestPolicy(t), Templates: files, Backends: testBackends})
	return err
}
