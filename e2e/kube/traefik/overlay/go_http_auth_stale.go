// Added to a scratch copy of github.com/abbot/go-http-auth when e2e/kube/build.sh builds
// traefik: traefik's digest middleware calls this method of the containous fork, which the Go
// module proxy does not serve; the original module lacks it.
package auth

import (
	"fmt"
	"net/http"
	"time"
)

// RequireAuthStale answers like RequireAuth, with the challenge marked `stale=true` (RFC 7616
// section 3.3): the client's nonce is no longer known, so it may retry with the new nonce
// without asking its user for the password again.
func (da *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) {
	nonce := RandomKey()
	da.mutex.Lock()
	da.clients[nonce] = &digestClient{nc: 0, lastSeen: time.Now().UnixNano()}
	da.mutex.Unlock()

	da.mutex.RLock()
	defer da.mutex.RUnlock()
	w.Header().Set(contentType, da.Headers.V().UnauthContentType)
	w.Header().Set(da.Headers.V().Authenticate,
		fmt.Sprintf(`Digest realm="%s", nonce="%s", opaque="%s", algorithm=MD5, qop="auth", stale=true`,
			da.Realm, nonce, da.Opaque))
	w.WriteHeader(da.Headers.V().UnauthCode)
	_, _ = w.Write([]byte(da.Headers.V().UnauthResponse))
}
