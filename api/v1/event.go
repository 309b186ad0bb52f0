package v1

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Event types. The first word is the kind (?type=instance matches every
// instance event).
const (
	EventInstanceRequested   = "instance.requested"
	EventInstancePlaced      = "instance.placed"
	EventInstancePulling     = "instance.pulling"
	EventInstanceStarted     = "instance.started"
	EventInstanceError       = "instance.error"
	EventInstanceRequeued    = "instance.requeued"
	EventInstanceRestarted   = "instance.restarted"
	EventInstanceTerminating = "instance.terminating"
	EventInstanceTerminated  = "instance.terminated"
	EventNodeJoined          = "node.joined"
	EventNodeOnline          = "node.online"
	EventNodeOffline         = "node.offline"
	EventNodeDrained         = "node.drained"
	EventNodeUndrained       = "node.undrained"
	EventNodeDisjoined       = "node.disjoined"
	EventTemplatePushed      = "template.pushed"
	EventTemplateDeleted     = "template.deleted"
	EventTemplateDistributed = "template.distributed"
	EventAuthFailed          = "auth.failed"
	EventSchedulerLeader     = "scheduler.leader"
	EventEventsLost          = "events.lost"
)

// Event is one entry of the cloud's event log (GET /api/v1/events).
type Event struct {
	// ID orders events: "<etcd revision>-<index>"; ?since= takes one.
	ID         string    `json:"id"`
	Time       time.Time `json:"time"`
	Type       string    `json:"type"`
	InstanceID string    `json:"instance_id,omitempty"`
	NodeID     string    `json:"node_id,omitempty"`
	TemplateID string    `json:"template_id,omitempty"`
	Tag        string    `json:"tag,omitempty"`
	GroupID    string    `json:"group_id,omitempty"`
	// State is the instance's or node's state after the event.
	State string `json:"state,omitempty"`
	// Message says why: an error, a termination's reason, who failed to log in.
	Message string `json:"message,omitempty"`
}

// EventID is an event's position: the etcd revision of the change it
// records and its index among that revision's events.
type EventID struct {
	Rev   int64
	Index int
}

func (id EventID) String() string { return fmt.Sprintf("%d-%d", id.Rev, id.Index) }

// ParseEventID reads "<rev>-<index>" (or a bare revision).
func ParseEventID(s string) (EventID, error) {
	revS, idxS, hasIdx := strings.Cut(s, "-")
	rev, err := strconv.ParseInt(revS, 10, 64)
	if err != nil || rev < 0 {
		return EventID{}, fmt.Errorf("want an event id like 1234-0, got %q", s)
	}
	idx := 0
	if hasIdx {
		if idx, err = strconv.Atoi(idxS); err != nil || idx < 0 || idx > 9999 {
			return EventID{}, fmt.Errorf("want an event id like 1234-0, got %q", s)
		}
	}
	return EventID{rev, idx}, nil
}

// Less orders ids.
func (id EventID) Less(o EventID) bool {
	return id.Rev < o.Rev || id.Rev == o.Rev && id.Index < o.Index
}

// EventKind is an event type's first word ("instance").
func EventKind(typ string) string { k, _, _ := strings.Cut(typ, "."); return k }

// MatchesType reports whether an event of type typ answers ?type=want: the
// exact type, or its kind.
func MatchesType(typ, want string) bool {
	return want == "" || typ == want || EventKind(typ) == want
}
