package node

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/corral-build/corral/client"
)

// registryCreds is the node's registry credential: a pull token the
// controller issues against the node's own credential, fetched when needed
// and renewed a minute before it expires. A controller that issues no
// tokens (no secret configured) means the registry is pulled from without
// credentials; that answer is asked again after a minute.
type registryCreds struct {
	ctl *client.Controller

	mu      sync.Mutex
	header  string
	renewAt time.Time
}

func (c *registryCreds) authorization(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Now().Before(c.renewAt) {
		return c.header, nil
	}
	tok, err := c.ctl.RegistryToken(ctx, "repository:*:pull")
	var fe *client.FailError
	switch {
	case errors.As(err, &fe) && fe.HTTPStatus == http.StatusNotFound:
		c.header, c.renewAt = "", time.Now().Add(time.Minute)
		return "", nil
	case err != nil:
		return "", err
	}
	c.header = "Bearer " + tok.Token
	c.renewAt = time.Now().Add(time.Duration(max(tok.ExpiresIn-60, tok.ExpiresIn/2)) * time.Second)
	return c.header, nil
}
