package events

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/retry"
	"github.com/corral-build/corral/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Webhook delivers the event log to a URL, in order and at least once: a
// POST of {"events": [...]} (up to 100 at a time), retried with backoff
// until it answers 2xx; the delivered position is kept in etcd, so a new
// leader goes on where the last one stopped. It runs beside scheduling and
// never holds it up: a dead receiver only makes the webhook fall behind.
type Webhook struct {
	URL string
	// Secret, when set, signs each body: X-Corral-Signature: sha256=<hex HMAC>.
	Secret string
	// Client's timeout bounds each attempt (10 s when nil).
	Client *http.Client
	// Retry is the backoff between failed attempts (retry.Forever's shape).
	Retry retry.Policy
	st    *store.Store
	log   *slog.Logger
}

// NewWebhook returns a webhook delivering st's events to url.
func NewWebhook(st *store.Store, url, secret string, log *slog.Logger) *Webhook {
	return &Webhook{URL: url, Secret: secret, Client: &http.Client{Timeout: 10 * time.Second},
		Retry: retry.Policy{Initial: time.Second, Max: time.Minute, PerAttempt: 10 * time.Second}, st: st, log: log}
}

// Run delivers while ctx lasts and fence holds.
func (w *Webhook) Run(ctx context.Context, fence clientv3.Cmp) {
	cursor, err := w.st.WebhookCursor(ctx)
	if err != nil {
		w.log.Warn("webhook: read cursor", "err", err)
		return
	}
	var after *apiv1.EventID
	if cursor != "" {
		id, err := apiv1.ParseEventID(cursor)
		if err == nil {
			after = &id
		}
	} else {
		// First run: deliver from now on, not the whole log.
		newest, err := w.st.ListEvents(ctx, store.EventQuery{Limit: 1})
		if err != nil {
			w.log.Warn("webhook: read log", "err", err)
			return
		}
		after = &apiv1.EventID{}
		if len(newest) > 0 {
			*after, _ = apiv1.ParseEventID(newest[0].ID)
		}
	}
	err = Follow(ctx, w.st, store.EventQuery{After: after, Limit: 100}, func(batch []apiv1.Event) error {
		if err := w.Retry.Do(ctx, func(ctx context.Context) error { return w.post(ctx, batch) }); err != nil {
			return err
		}
		return w.st.SetWebhookCursor(ctx, fence, batch[len(batch)-1].ID)
	})
	if err != nil && ctx.Err() == nil && !errors.Is(err, store.ErrNotLeader) {
		w.log.Warn("webhook stopped", "err", err)
	}
}

func (w *Webhook) post(ctx context.Context, batch []apiv1.Event) error {
	body, err := json.Marshal(map[string]any{"events": batch})
	if err != nil {
		return retry.Permanent(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return retry.Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "corral-events/"+apiv1.Version)
	if w.Secret != "" {
		m := hmac.New(sha256.New, []byte(w.Secret))
		m.Write(body)
		req.Header.Set("X-Corral-Signature", "sha256="+hex.EncodeToString(m.Sum(nil)))
	}
	resp, err := w.Client.Do(req)
	if err != nil {
		w.log.Warn("webhook delivery failed; retrying", "url", w.URL, "err", err)
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		w.log.Warn("webhook delivery refused; retrying", "url", w.URL, "status", resp.Status)
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// Follow calls fn with every event after q.After that matches q, in order
// and in batches of up to q.Limit, waiting for new ones until ctx ends or fn
// fails. The log is watched, not polled.
func Follow(ctx context.Context, st *store.Store, q store.EventQuery, fn func([]apiv1.Event) error) error {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// Watch first, then list: nothing falls between the two.
	watch := st.Client().Watch(wctx, st.EventsPrefix(), clientv3.WithPrefix(), clientv3.WithFilterDelete())
	keepalive := time.NewTicker(30 * time.Second)
	defer keepalive.Stop()
	for {
		for {
			evs, err := st.ListEvents(ctx, q)
			if err != nil {
				return err
			}
			if len(evs) == 0 {
				break
			}
			if err := fn(evs); err != nil {
				return err
			}
			id, err := apiv1.ParseEventID(evs[len(evs)-1].ID)
			if err != nil {
				return err
			}
			q.After = &id
			if len(evs) < q.Limit {
				break
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-keepalive.C:
			// A partitioned watch can go quiet: list again now and then.
		case _, ok := <-watch:
			if !ok {
				return errors.New("event watch closed")
			}
		}
	}
}
