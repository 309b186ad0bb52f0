package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// Restart restarts an instance's VM in place (POST /api/v1/rpc/vm/restart).
func (c *Controller) Restart(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/rpc/vm/restart", apiv1.IDRequest{ID: id}, nil)
}

// Logs returns an instance's startup-script output and console tail.
func (c *Controller) Logs(ctx context.Context, id string) (apiv1.InstanceLogs, error) {
	var l apiv1.InstanceLogs
	return l, c.do(ctx, http.MethodGet, "/api/v1/vm/logs?id="+url.QueryEscape(id), nil, &l)
}

// Events lists events; q holds since, type, instance_id, node_id, limit.
func (c *Controller) Events(ctx context.Context, q url.Values) ([]apiv1.Event, error) {
	var evs []apiv1.Event
	return evs, c.do(ctx, http.MethodGet, "/api/v1/events?"+q.Encode(), nil, &evs)
}

// FollowEvents streams events (GET /api/v1/events?follow=true) to fn until
// ctx ends; a dropped stream is resumed after the last event seen, so none
// is missed or repeated.
func (c *Controller) FollowEvents(ctx context.Context, q url.Values, fn func(apiv1.Event) error) error {
	q = cloneValues(q)
	q.Set("follow", "true")
	last := ""
	for attempt := 0; ; attempt++ {
		got, err := c.followOnce(ctx, q, last, fn)
		if got != "" {
			last, attempt = got, 0
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if fe, ok := err.(*FailError); ok && fe.HTTPStatus < 500 {
			return err
		}
		if err == ErrUnauthorized {
			return err
		}
		if attempt >= 5 {
			return fmt.Errorf("event stream: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.Retry.Delay(attempt)):
		}
	}
}

func (c *Controller) followOnce(ctx context.Context, q url.Values, last string, fn func(apiv1.Event) error) (string, error) {
	base := c.URL()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/events?"+q.Encode(), nil)
	if err != nil {
		return "", err
	}
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	req.Header.Set("Accept", "text/event-stream")
	if c.rootToken != "" {
		req.SetBasicAuth("root", c.rootToken)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		idx := c.cur.Load()
		c.cur.CompareAndSwap(idx, idx+1) // the next controller, next time
		return "", err
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return "", decodeEnvelope(resp, nil, "GET /api/v1/events")
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var kind, data string
	seen := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != "" && kind != "error" {
				var ev apiv1.Event
				if err := json.Unmarshal([]byte(data), &ev); err != nil {
					return seen, fmt.Errorf("event stream: %w", err)
				}
				if err := fn(ev); err != nil {
					return seen, err
				}
				seen = ev.ID
			} else if kind == "error" {
				return seen, fmt.Errorf("event stream: controller said %s", data)
			}
			kind, data = "", ""
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		}
	}
	if err := sc.Err(); err != nil {
		return seen, err
	}
	return seen, fmt.Errorf("event stream ended")
}

func cloneValues(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// Distribute asks nodes to pull a template tag ahead of instances.
func (c *Controller) Distribute(ctx context.Context, req apiv1.DistributeRequest) (string, error) {
	var out struct {
		RequestID string `json:"request_id"`
	}
	err := c.do(ctx, http.MethodPost, "/api/v1/registry/vm/distribute", req, &out)
	return out.RequestID, err
}

// Distribution returns a distribute request's state.
func (c *Controller) Distribution(ctx context.Context, id string) (apiv1.DistributionView, error) {
	var d apiv1.DistributionView
	return d, c.do(ctx, http.MethodGet, "/api/v1/registry/vm/distribute?id="+url.QueryEscape(id), nil, &d)
}
