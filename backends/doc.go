// Package backends groups the Vault secret backends that implement
// broker.Backend: backends/vaulttoken, backends/vaultlease and
// backends/vaultpki, over the shared Vault client in backends/vault.
// Vault admins plug them in through the backends: section of the config.
package backends
