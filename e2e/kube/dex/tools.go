//go:build tools

// Package dex only pins Dex's command for e2e/kube/build.sh (`go mod tidy` keeps its
// dependencies here); nothing in this module is built on its own.
package dex

import _ "github.com/dexidp/dex/cmd/dex"
