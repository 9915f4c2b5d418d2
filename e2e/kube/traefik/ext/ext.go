// Package ext is empty: traefik's open-source configuration has no extension fields.
package ext

// HTTP is embedded in traefik's HTTP configuration.
type HTTP struct{}

// Router is embedded in traefik's router configuration.
type Router struct{}
