package vault

import (
	"fmt"
	"regexp"
)

// nameRE is what Vault accepts for token role and policy names, and what
// latch allows for mount names: letters, digits, and - _ . inside.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$`)

// CheckName reports whether value is a plain Vault name (a role, policy or
// mount); field names the config key in the error.
func CheckName(field, value string) error {
	if !nameRE.MatchString(value) {
		return fmt.Errorf("%s: %q is not a valid Vault name (letters, digits, and - _ . inside)", field, value)
	}
	return nil
}

// CheckMount is CheckName for a mount path, which may have inner slashes
// (such as pki/agents).
func CheckMount(field, value string) error {
	if _, err := CleanPath(value); err != nil {
		return fmt.Errorf("%s: %q is not a valid mount path", field, value)
	}
	return nil
}
