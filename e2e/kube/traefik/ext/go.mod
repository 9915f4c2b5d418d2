// The extension point traefik's dynamic configuration embeds (upstream keeps it as a nested
// module that the published module zip leaves out, and the proxy does not serve it). Empty in
// the open-source build: no extra fields.
module github.com/traefik/traefik/dynamic/ext

go 1.26.0
