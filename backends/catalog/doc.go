// Package catalog is the one list of backend types latch can plug in, and
// the one path from a backends: section of latch.yaml to running backends.
// cmd/latch (server and `latch check`), the integration tests and their
// crash child all go through it, so what they build is what latch builds.
//
// Each type in BuiltIns decodes its own keys strictly into its package's
// Config (vaulttoken.Config, vaultlease.Config, vaultpki.Config), checks it
// with that Config's Validate, and builds the backend over latch's Vault
// client (backends/vault). Errors name file:line:col like the rest of the
// config. Adding a backend type is adding one entry to BuiltIns.
//
// Each type also hands templates its RenderCheck (templates.Backend.Check):
// the checks its Mint makes of rendered paths, names or policies, which
// templates.Evaluate then runs on every request, so what the backend would
// refuse is denied before an approver is asked. This is how those checks
// reach templates without templates importing a backend.
//
//	// latch.yaml, already decoded by strictyaml into map[string]catalog.Block:
//	set, err := catalog.Decode(cfg.Backends)
//	pol, err := templates.Load(templates.Source{..., Backends: set.Templates()})
//	// once latch's Vault client has logged in:
//	backends, err := set.Build(vc) // map[string]broker.Backend for broker.Config
//
//	// or from YAML text, as the integration tests do:
//	set, err := catalog.Parse("latch.yaml", []byte("backends:\n  tokens: { type: vault-token }\n"))
package catalog
