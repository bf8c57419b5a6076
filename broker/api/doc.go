// Package api holds the JSON wire types shared by latch's HTTP server and
// its Go client.
package api
