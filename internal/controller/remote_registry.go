package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/retry"
)

// RemoteRegistry is the controller's view of a Corral registry over HTTP.
type RemoteRegistry struct{ c *client.Registry }

// NewRemoteRegistry talks to the registry at url.
func NewRemoteRegistry(url string, tlsCfg *tls.Config) (*RemoteRegistry, error) {
	c, err := client.NewRegistry(url)
	if err != nil {
		return nil, err
	}
	c.UseTLS(tlsCfg)
	// API calls wait on these: two quick tries, each bounded.
	c.Retry = retry.Policy{Attempts: 2, Initial: 100 * time.Millisecond, Max: time.Second, PerAttempt: 10 * time.Second}
	return &RemoteRegistry{c: c}, nil
}

// registryErr maps the registry's FAIL messages to domain errors.
func registryErr(err error) error {
	var fe *client.FailError
	if errors.As(err, &fe) {
		switch {
		case fe.Message == apiv1.MsgNotFound:
			return ErrNotInRegistry
		case strings.HasPrefix(fe.Message, "No such tag "):
			return &NoSuchTagError{strings.TrimPrefix(fe.Message, "No such tag ")}
		}
	}
	return err
}

func (r *RemoteRegistry) Ping(ctx context.Context) error {
	_, err := r.c.Status(ctx)
	return err
}

func (r *RemoteRegistry) ListTemplates(ctx context.Context) ([]apiv1.Template, error) {
	t, err := r.c.Templates(ctx)
	return t, registryErr(err)
}

func (r *RemoteRegistry) GetTemplate(ctx context.Context, id string) (apiv1.TemplateDetail, error) {
	t, err := r.c.Template(ctx, id)
	return t, registryErr(err)
}

func (r *RemoteRegistry) DeleteTemplate(ctx context.Context, id, tag string) error {
	return registryErr(r.c.Delete(ctx, id, tag))
}

func (r *RemoteRegistry) Revert(ctx context.Context, id string) error {
	return registryErr(r.c.Revert(ctx, id))
}

func (r *RemoteRegistry) RevertTo(ctx context.Context, id, tag string, number int) error {
	return registryErr(r.c.RevertTo(ctx, id, tag, number))
}

func (r *RemoteRegistry) Disk(ctx context.Context) (apiv1.Disk, error) {
	d, err := r.c.Disk(ctx)
	return d, registryErr(err)
}
