// Package controller is Corral's domain service: starting and terminating
// instances, nodes, groups, and the node agents' protocol. It knows nothing of
// HTTP; internal/controller/httpapi maps it onto /api/v1.
package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/regauth"
	"github.com/corral-build/corral/internal/store"
)

// Domain errors; httpapi maps each to the reference product's FAIL message.
var (
	ErrNotFound      = errors.New("not found")
	ErrNotInRegistry = errors.New("template not in registry")
	ErrBadToken      = errors.New("invalid join token")
	ErrDisjoined     = errors.New("node was disjoined")
	ErrLeaseExpired  = store.ErrLeaseExpired
)

// NoSuchTagError is returned when a start request names an unknown tag.
type NoSuchTagError struct{ Tag string }

func (e *NoSuchTagError) Error() string { return apiv1.MsgNoSuchTag(e.Tag) }

// Config is the controller's behaviour that operators choose.
type Config struct {
	// RegistryURL is handed to nodes and shown as anka_registry.
	RegistryURL string
	// NodeLeaseTTL is how long a silent node stays Active.
	NodeLeaseTTL time.Duration
	// AssignmentPoll bounds one long-poll for a node's assignments.
	AssignmentPoll time.Duration
	Auth           AuthConfig
	// MaxWaiting bounds the instances not yet running in the cloud
	// (DefaultMaxWaiting when 0; negative: no bound); MaxWaitingPerCaller
	// those of one caller (0: no bound). Starts past them are refused.
	MaxWaiting          int
	MaxWaitingPerCaller int
	// MaxInstanceBytes bounds what unfinished instances keep in etcd
	// (DefaultMaxInstanceBytes when 0; negative: no bound).
	MaxInstanceBytes int
}

// Service implements the controller's operations over the store.
type Service struct {
	st       *store.Store
	registry Registry
	catalog  *Catalog
	cfg      Config
	log      *slog.Logger
	regKey   regauth.Key
	waiting  waitingCount
	authFail authFailures
}

// New returns a Service.
func New(st *store.Store, registry Registry, cfg Config, log *slog.Logger) *Service {
	if cfg.NodeLeaseTTL <= 0 {
		cfg.NodeLeaseTTL = 15 * time.Second
	}
	if cfg.AssignmentPoll <= 0 {
		cfg.AssignmentPoll = 30 * time.Second
	}
	if cfg.MaxInstanceBytes == 0 {
		cfg.MaxInstanceBytes = DefaultMaxInstanceBytes
	}
	if cfg.MaxWaiting == 0 {
		cfg.MaxWaiting = DefaultMaxWaiting
	}
	key := regauth.NewKey(cmp.Or(cfg.Auth.RegistryTokenSecret, cfg.Auth.RootToken))
	if rr, ok := registry.(*RemoteRegistry); ok {
		rr.c.UseAuth(registryAuthHeader(key))
	}
	return &Service{st: st, registry: registry, catalog: NewCatalog(registry, log), cfg: cfg, log: log, regKey: key}
}

// Catalog is the cached registry view the scheduler plans from.
func (s *Service) Catalog() *Catalog { return s.catalog }

// Registry returns the controller's view of the registry.
func (s *Service) Registry() Registry { return s.registry }

// Status reports the cloud's health for GET /api/v1/status.
func (s *Service) Status(ctx context.Context) apiv1.Status {
	st := apiv1.Status{Status: "Running", Version: apiv1.Version,
		RegistryAddress: s.cfg.RegistryURL, RegistryStatus: "Running",
		License: "Corral open source (Apache-2.0), unlimited"}
	if st.RegistryAddress == "" {
		st.RegistryAddress = "none"
	}
	if err := s.registry.Ping(ctx); err != nil {
		st.RegistryStatus = "FAIL"
	}
	return st
}

// notFound turns the store's ErrNotFound into the domain's.
func notFound(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return ErrNotFound
	}
	return err
}

func fieldErr(field, format string, args ...any) error {
	return &apiv1.FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// StartWatchers runs the controller's shared watch until ctx ends: the
// store's view (instances, nodes, groups and each node's desired state,
// which also wakes the nodes' long polls).
func (s *Service) StartWatchers(ctx context.Context) { s.st.EnableView(ctx) }
