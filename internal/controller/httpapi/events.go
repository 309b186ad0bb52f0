package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
)

// eventQuery reads ?since= (an event id or an RFC 3339 time), ?type=,
// ?instance_id=, ?node_id= and ?limit= (1..1000, 100 by default).
func eventQuery(r *http.Request) (store.EventQuery, error) {
	qs := r.URL.Query()
	q := store.EventQuery{Type: qs.Get("type"), InstanceID: qs.Get("instance_id"), NodeID: qs.Get("node_id"), Limit: 100}
	if v := qs.Get("since"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			q.Since = t
		} else if id, err := apiv1.ParseEventID(v); err == nil {
			q.After = &id
		} else {
			return q, &apiv1.FieldError{Field: "since", Reason: "want an event id (1234-0) or an RFC 3339 time, got " + strconv.Quote(v)}
		}
	}
	if v := qs.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > controller.MaxEventsPage {
			return q, &apiv1.FieldError{Field: "limit", Reason: fmt.Sprintf("want an integer from 1 to %d, got %q", controller.MaxEventsPage, v)}
		}
		q.Limit = n
	}
	if q.Type != "" && !knownEventType(q.Type) {
		return q, &apiv1.FieldError{Field: "type", Reason: "unknown event type or kind " + strconv.Quote(q.Type)}
	}
	return q, nil
}

var eventTypes = []string{apiv1.EventInstanceRequested, apiv1.EventInstancePlaced, apiv1.EventInstancePulling,
	apiv1.EventInstanceStarted, apiv1.EventInstanceError, apiv1.EventInstanceRequeued, apiv1.EventInstanceRestarted,
	apiv1.EventInstanceTerminating, apiv1.EventInstanceTerminated, apiv1.EventNodeJoined, apiv1.EventNodeOnline,
	apiv1.EventNodeOffline, apiv1.EventNodeDrained, apiv1.EventNodeUndrained, apiv1.EventNodeDisjoined,
	apiv1.EventTemplatePushed, apiv1.EventTemplateDeleted, apiv1.EventTemplateDistributed, apiv1.EventAuthFailed,
	apiv1.EventSchedulerLeader, apiv1.EventEventsLost}

func knownEventType(t string) bool {
	for _, e := range eventTypes {
		if apiv1.MatchesType(e, t) {
			return true
		}
	}
	return false
}

// events answers GET /api/v1/events; with ?follow=true it streams them as
// server-sent events (text/event-stream: "id:" the event id, "data:" the
// event) until the client goes away, honouring Last-Event-ID on reconnects.
func (a *API) events(w http.ResponseWriter, r *http.Request) {
	q, err := eventQuery(r)
	follow := r.URL.Query().Get("follow")
	if err == nil && follow != "" && follow != "true" && follow != "1" && follow != "false" && follow != "0" {
		err = &apiv1.FieldError{Field: "follow", Reason: "want true or false, got " + strconv.Quote(follow)}
	}
	if err == nil && (follow == "true" || follow == "1") {
		if last := r.Header.Get("Last-Event-ID"); last != "" {
			if id, perr := apiv1.ParseEventID(last); perr == nil {
				q.After = &id
			}
		}
		a.streamEvents(w, r, q)
		return
	}
	a.handle(func(r *http.Request) (any, error) {
		if err != nil {
			return nil, err
		}
		return a.svc.Events(r.Context(), q)
	}).ServeHTTP(w, r)
}

func (a *API) streamEvents(w http.ResponseWriter, r *http.Request, q store.EventQuery) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": corral events\n\n")
	_ = rc.Flush()
	ctx := r.Context()
	err := a.svc.FollowEvents(ctx, q, func(evs []apiv1.Event) error {
		for _, ev := range evs {
			data, _ := json.Marshal(ev)
			if _, err := fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", ev.ID, ev.Type, data); err != nil {
				return err
			}
		}
		return rc.Flush()
	})
	if err != nil && ctx.Err() == nil {
		a.log.Warn("event stream ended", "err", err)
		_, _ = fmt.Fprintf(w, "event: error\ndata: %q\n\n", err.Error())
		_ = rc.Flush()
	}
}

func (a *API) instanceLogs(r *http.Request) (any, error) {
	return a.svc.InstanceLogs(r.Context(), r.URL.Query().Get("id"))
}
