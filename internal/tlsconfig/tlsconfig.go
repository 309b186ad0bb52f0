// Package tlsconfig builds the TLS settings of Corral's servers and clients
// from the operator's files (the reference product's ANKA_USE_HTTPS,
// ANKA_SERVER_CERT, ANKA_SERVER_KEY, ANKA_CA_CERT, ANKA_SKIP_TLS_VERIFICATION).
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// Server describes a server's TLS: its certificate, and optionally a CA
// whose client certificates are accepted as credentials.
type Server struct {
	CertFile, KeyFile string
	ClientCAFile      string
	// RequireClientCert refuses connections without a certificate from the
	// client CA (servers with no other authentication, like the registry).
	RequireClientCert bool
}

// Config returns the server's tls.Config, or nil when TLS is off.
func (s Server) Config() (*tls.Config, error) {
	if s.CertFile == "" && s.KeyFile == "" {
		if s.ClientCAFile != "" {
			return nil, errors.New("a client CA needs HTTPS: set the server certificate and key")
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if s.ClientCAFile != "" {
		pool, err := loadPool(s.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		// Certificates are verified when given; whether one is required is
		// the authentication settings' call.
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
		if s.RequireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return cfg, nil
}

// Client describes how a client trusts servers and proves itself.
type Client struct {
	CAFile            string // extra CA to trust
	SkipVerify        bool
	CertFile, KeyFile string // client certificate, for mTLS
}

// Config returns the client's tls.Config (nil when nothing is set).
func (c Client) Config() (*tls.Config, error) {
	if c == (Client{}) {
		return nil, nil
	}
	cfg := &tls.Config{InsecureSkipVerify: c.SkipVerify, MinVersion: tls.VersionTLS12} //nolint:gosec // the operator asked
	if c.CAFile != "" {
		pool, err := loadPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA: %w", err)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificates", file)
	}
	return pool, nil
}
