// Stands in for lego's generated list of DNS-01 providers when e2e/kube/build.sh builds traefik
// (go build -overlay): several of the providers' SDK modules are not served by the Go module
// proxy, and the e2e host issues certificates with cert-manager, never with traefik's ACME.
package dns

import (
	"fmt"

	"github.com/go-acme/lego/v5/challenge"
)

// NewDNSChallengeProviderByName refuses every provider: none is built in.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	return nil, fmt.Errorf("DNS-01 provider %q is not built into this traefik (vcluster e2e build)", name)
}
