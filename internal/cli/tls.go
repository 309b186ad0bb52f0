package cli

import (
	"fmt"

	"github.com/corral-build/corral/internal/tlsconfig"
)

// serverTLSFlags are a server's HTTPS settings, under the reference
// product's names (ANKA_USE_HTTPS, ANKA_SERVER_CERT, ANKA_SERVER_KEY,
// ANKA_CA_CERT).
type serverTLSFlags struct {
	useHTTPS            bool
	cert, key, clientCA string
	// requireClientCert: a client certificate is the only way in (the
	// registry, which has no other authentication).
	requireClientCert bool
}

// register defines the flags; clientCAUsage says what --ca-cert does for
// this server.
func (t *serverTLSFlags) register(f *flags, clientCAUsage string) {
	f.Bool(&t.useHTTPS, "use-https", false, "serve HTTPS (needs --server-cert and --server-key)", "ANKA_USE_HTTPS")
	f.String(&t.cert, "server-cert", "", "PEM certificate for HTTPS", "ANKA_SERVER_CERT")
	f.String(&t.key, "server-key", "", "PEM private key for HTTPS", "ANKA_SERVER_KEY")
	f.String(&t.clientCA, "ca-cert", "", clientCAUsage, "ANKA_CA_CERT", "ANKA_ROOT_CERT") // ANKA_ROOT_CERT: the root CA of the reference's TLS guide
}

func (t *serverTLSFlags) config() (tlsconfig.Server, error) {
	if !t.useHTTPS {
		if t.cert != "" || t.key != "" || t.clientCA != "" {
			return tlsconfig.Server{}, fmt.Errorf("certificates are set but HTTPS is off: add --use-https (ANKA_USE_HTTPS=true)")
		}
		return tlsconfig.Server{}, nil
	}
	if t.cert == "" || t.key == "" {
		return tlsconfig.Server{}, fmt.Errorf("--use-https needs --server-cert and --server-key")
	}
	s := tlsconfig.Server{CertFile: t.cert, KeyFile: t.key, ClientCAFile: t.clientCA, RequireClientCert: t.requireClientCert}
	if _, err := s.Config(); err != nil {
		return s, err
	}
	return s, nil
}

// clientTLSFlags are how a client trusts HTTPS servers and proves itself.
type clientTLSFlags struct {
	caCert, cert, key string
	skipVerify        bool
}

// register defines the flags under prefix; referenceNames also reads the
// reference product's ANKA_SKIP_TLS_VERIFICATION (one client per command).
func (t *clientTLSFlags) register(f *flags, prefix string, withCert, referenceNames bool) {
	f.String(&t.caCert, prefix+"tls-ca", "", "extra CA certificate to trust for HTTPS")
	aliases := aliasIf(referenceNames, "ANKA_SKIP_TLS_VERIFICATION")
	if referenceNames && prefix == "s3-" { // the reference's name for the registry's S3 client
		aliases = append([]string{"ANKA_BACKEND_S3_SKIP_TLS_VERIFICATION"}, aliases...)
	}
	f.Bool(&t.skipVerify, prefix+"skip-tls-verification", false, "do not verify HTTPS certificates (testing only)", aliases...)
	if withCert {
		f.String(&t.cert, prefix+"client-cert", "", "client certificate, for servers that authenticate by certificate")
		f.String(&t.key, prefix+"client-key", "", "client certificate's private key")
	}
}

func (t *clientTLSFlags) config() tlsconfig.Client {
	return tlsconfig.Client{CAFile: t.caCert, SkipVerify: t.skipVerify, CertFile: t.cert, KeyFile: t.key}
}
