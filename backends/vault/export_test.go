package vault

import "time"

// SetMinReloginInterval changes the re-login rate limit and returns a
// function that restores it.
func SetMinReloginInterval(d time.Duration) (restore func()) {
	old := minReloginInterval
	minReloginInterval = d
	return func() { minReloginInterval = old }
}
