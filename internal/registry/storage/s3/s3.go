// Package s3 stores registry objects in an S3-compatible bucket (AWS S3,
// MinIO, versitygw, Ceph RGW...). Several registry replicas may share one
// bucket: every PUT is atomic in S3, and exclusive creation (tag numbers,
// template names, the GC lock) uses conditional writes (If-None-Match: *),
// which New checks the server honours before the registry starts.
package s3

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	sdk "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/corral-build/corral/internal/registry/storage"
)

// MaxObject bounds one object. Registry objects are packs (about 64 MiB),
// manifests (about 70 bytes per MiB of image: 7 MB for 100 GB) and small
// JSON records, so this is never reached by a sane template.
const MaxObject = 256 << 20

// Config names a bucket and how to reach it. Credentials come from the
// standard AWS chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, shared config
// files, web identity (EKS), or instance roles.
type Config struct {
	Bucket    string
	Prefix    string // key prefix inside the bucket, e.g. "corral/"; may be empty
	Endpoint  string // for S3-compatible servers, e.g. http://minio:9000; empty = AWS
	Region    string // default us-east-1 when neither this nor AWS_REGION is set
	PathStyle bool   // bucket in the path (most S3-compatible servers), not the host name
	// HTTPClient overrides the client (TLS options); nil = the SDK's default.
	HTTPClient *http.Client
	// ResponseTimeout bounds the wait for an answer to each request
	// (default 30 s).
	ResponseTimeout time.Duration
}

// Backend is an S3-backed storage.Backend.
type Backend struct {
	api      *sdk.Client
	bucket   string
	prefix   string
	unsigned bool // object bodies go UNSIGNED-PAYLOAD (checkUnsignedPayloads)
}

// New connects to the bucket, checks it exists and that the server honours
// conditional writes; without those two registries could claim one tag number.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: a bucket name is required")
	}
	if cfg.Endpoint != "" {
		if u, err := url.Parse(cfg.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("s3 endpoint %q: want http(s)://host[:port]", cfg.Endpoint)
		}
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	// Every request has a deadline to its answer's headers, so a hung S3
	// endpoint fails the call (and the SDK's standard retryer retries it)
	// instead of blocking it; bodies stream without an overall limit.
	wait := cmp.Or(cfg.ResponseTimeout, 30*time.Second)
	var hc config.HTTPClient = awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.ResponseHeaderTimeout = wait
	})
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		if tr, ok := c.Transport.(*http.Transport); ok && tr.ResponseHeaderTimeout == 0 {
			tr = tr.Clone()
			tr.ResponseHeaderTimeout = wait
			c.Transport = tr
		}
		hc = &c
	}
	opts := []func(*config.LoadOptions) error{config.WithHTTPClient(hc)}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 config: %w", err)
	}
	switch {
	case cfg.Region != "":
		awsCfg.Region = cfg.Region
	case awsCfg.Region == "":
		awsCfg.Region = "us-east-1"
	}
	api := sdk.NewFromConfig(awsCfg, func(o *sdk.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Checksums only when the server asks: several S3-compatible servers
		// reject the SDK's default trailing CRC headers.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	b := &Backend{api: api, bucket: cfg.Bucket, prefix: cfg.Prefix}
	if _, err := api.HeadBucket(ctx, &sdk.HeadBucketInput{Bucket: &b.bucket}); err != nil {
		return nil, fmt.Errorf("s3 bucket %s: %w", cfg.Bucket, err)
	}
	if err := b.checkUnsignedPayloads(ctx); err != nil {
		return nil, err
	}
	if err := b.checkConditionalWrites(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// checkUnsignedPayloads sends object bodies unsigned (UNSIGNED-PAYLOAD)
// where the server takes them: the registry verifies every chunk's sha256
// as it writes it, and every pull verifies it again, so the SDK's sha256 of
// each part for the signature would hash every byte a third time (and the
// server a fourth, checking it). A server that refuses gets them signed.
func (b *Backend) checkUnsignedPayloads(ctx context.Context) error {
	probe := fmt.Sprintf("probe/unsigned-payload-%d", time.Now().UnixNano())
	defer b.Delete(context.WithoutCancel(ctx), probe)
	b.unsigned = true
	if err := b.Put(ctx, probe, strings.NewReader("probe"), storage.Replace); err == nil {
		return nil
	}
	b.unsigned = false
	if err := b.Put(ctx, probe, strings.NewReader("probe"), storage.Replace); err != nil {
		return fmt.Errorf("s3 bucket %s: write probe: %w", b.bucket, err)
	}
	return nil
}

// payload is the per-call option that leaves a body unsigned.
func (b *Backend) payload() []func(*sdk.Options) {
	if !b.unsigned {
		return nil
	}
	return []func(*sdk.Options){func(o *sdk.Options) {
		o.APIOptions = append(o.APIOptions, v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
	}}
}

func (b *Backend) checkConditionalWrites(ctx context.Context) error {
	probe := fmt.Sprintf("probe/conditional-write-%d", time.Now().UnixNano())
	defer b.Delete(context.WithoutCancel(ctx), probe)
	for i := range 2 {
		err := b.Put(ctx, probe, strings.NewReader("probe"), storage.Exclusive)
		switch {
		case i == 0 && err != nil:
			return fmt.Errorf("s3 bucket %s: write probe: %w", b.bucket, err)
		case i == 1 && err == nil:
			return fmt.Errorf("s3 bucket %s: the server ignores conditional writes (If-None-Match: *), which several registry replicas need to number tags safely; use a server that supports them (AWS S3, MinIO, versitygw)", b.bucket)
		case i == 1 && !errors.Is(err, storage.ErrExists):
			return fmt.Errorf("s3 bucket %s: write probe: %w", b.bucket, err)
		}
	}
	return nil
}

func (b *Backend) key(p string) (string, error) {
	if err := storage.CheckPath(p); err != nil {
		return "", err
	}
	return b.prefix + p, nil
}

// notFound reports whether err is S3's answer for a missing key.
func notFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	var api smithy.APIError
	return errors.As(err, &nsk) || errors.As(err, &nf) ||
		(errors.As(err, &api) && (api.ErrorCode() == "NoSuchKey" || api.ErrorCode() == "NotFound"))
}

func errorCode(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	return ""
}

func (b *Backend) Put(ctx context.Context, p string, r io.Reader, mode storage.PutMode) error {
	key, err := b.key(p)
	if err != nil {
		return err
	}
	// Buffered so the request has a length and can be signed and retried;
	// a stream that breaks sends nothing, so no half object can appear.
	// Objects larger than a part (packs) go up as a multipart upload, one
	// part buffered at a time, visible only once completed.
	data, err := io.ReadAll(io.LimitReader(r, smallObject+1))
	if err != nil {
		return fmt.Errorf("storage put %s: %w", p, err)
	}
	if len(data) > smallObject { // a large object: a part buffer from the pool
		bufp := partBufs.Get().(*[]byte)
		defer partBufs.Put(bufp)
		n := copy(*bufp, data)
		got, err := io.ReadFull(r, (*bufp)[n:])
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return fmt.Errorf("storage put %s: %w", p, err)
		}
		data = (*bufp)[:n+got]
	}
	if len(data) > PartSize {
		if mode == storage.Exclusive {
			return fmt.Errorf("storage put %s: exclusive objects are small (over %d bytes)", p, PartSize)
		}
		return b.putMultipart(ctx, p, key, data, r)
	}
	for attempt := 0; ; attempt++ {
		in := &sdk.PutObjectInput{Bucket: &b.bucket, Key: &key, Body: bytes.NewReader(data),
			ContentLength: aws.Int64(int64(len(data))), Metadata: touchedNow()}
		if mode == storage.Exclusive {
			in.IfNoneMatch = aws.String("*")
		}
		_, err = b.api.PutObject(ctx, in, b.payload()...)
		switch code := errorCode(err); {
		case err == nil:
			return nil
		case code == "PreconditionFailed":
			return storage.ErrExists
		case code == "ConditionalRequestConflict" && attempt < 5:
			// Another conditional write to the key is in flight: its outcome
			// decides ours, so ask again.
			time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
		default:
			return fmt.Errorf("storage put %s: %w", p, err)
		}
	}
}

// PartSize is the part of a multipart upload held in memory at a time (S3's
// smallest is 5 MiB).
const PartSize = 8 << 20

// smallObject is what a Put reads before it takes a part buffer: records
// and manifests of small templates stay small allocations.
const smallObject = 256 << 10

// partBufs hold a part and one byte (to tell whether more follows); a Put
// uses one, whatever the object's size.
var partBufs = sync.Pool{New: func() any { b := make([]byte, PartSize+1); return &b }}

// putMultipart uploads buf (a whole part's worth and a byte, read already)
// and the rest of r in parts, refilling buf; any failure aborts the upload,
// so nothing appears.
func (b *Backend) putMultipart(ctx context.Context, p, key string, buf []byte, r io.Reader) error {
	up, err := b.api.CreateMultipartUpload(ctx, &sdk.CreateMultipartUploadInput{Bucket: &b.bucket, Key: &key, Metadata: touchedNow()})
	if err != nil {
		return fmt.Errorf("storage put %s: %w", p, err)
	}
	abort := func(err error) error {
		_, _ = b.api.AbortMultipartUpload(context.WithoutCancel(ctx), &sdk.AbortMultipartUploadInput{Bucket: &b.bucket, Key: &key, UploadId: up.UploadId})
		return fmt.Errorf("storage put %s: %w", p, err)
	}
	var parts []types.CompletedPart
	next, total := buf, int64(0)
	for n := int32(1); ; n++ {
		part := buf[:min(len(buf), PartSize)]
		rest := buf[len(part):]
		out, err := b.api.UploadPart(ctx, &sdk.UploadPartInput{Bucket: &b.bucket, Key: &key, UploadId: up.UploadId,
			PartNumber: aws.Int32(n), Body: bytes.NewReader(part), ContentLength: aws.Int64(int64(len(part)))}, b.payload()...)
		if err != nil {
			return abort(err)
		}
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n)})
		if total += int64(len(part)); total > MaxObject {
			return abort(fmt.Errorf("larger than %d bytes", MaxObject))
		}
		// Refill to one part and a byte: the last part may be small, no other.
		kept := copy(next, rest) // the byte past the part, to the front
		got, err := io.ReadFull(r, next[kept:])
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return abort(err)
		}
		if buf = next[:kept+got]; len(buf) == 0 {
			break
		}
	}
	_, err = b.api.CompleteMultipartUpload(ctx, &sdk.CompleteMultipartUploadInput{Bucket: &b.bucket, Key: &key, UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		return abort(err)
	}
	return nil
}

// Sync does nothing: a PUT that S3 acknowledged is durable.
func (b *Backend) Sync(context.Context) error { return nil }

func (b *Backend) Open(ctx context.Context, p string, offset int64) (io.ReadCloser, error) {
	key, err := b.key(p)
	if err != nil {
		return nil, err
	}
	in := &sdk.GetObjectInput{Bucket: &b.bucket, Key: &key}
	if offset > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", offset))
	}
	out, err := b.api.GetObject(ctx, in)
	if notFound(err) {
		return nil, storage.ErrNotFound
	}
	if errorCode(err) == "InvalidRange" {
		// Reading from the very end is an empty read, as on a file.
		if info, serr := b.Stat(ctx, p); serr == nil && info.Size == offset {
			return io.NopCloser(strings.NewReader("")), nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("storage open %s: %w", p, err)
	}
	return out.Body, nil
}

func (b *Backend) Stat(ctx context.Context, p string) (storage.Info, error) {
	key, err := b.key(p)
	if err != nil {
		return storage.Info{}, err
	}
	out, err := b.api.HeadObject(ctx, &sdk.HeadObjectInput{Bucket: &b.bucket, Key: &key})
	if notFound(err) {
		return storage.Info{}, storage.ErrNotFound
	}
	if err != nil {
		return storage.Info{}, fmt.Errorf("storage stat %s: %w", p, err)
	}
	info := storage.Info{Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}
	if touched, err := time.Parse(time.RFC3339Nano, out.Metadata[touchedKey]); err == nil && touched.After(info.ModTime) {
		info.ModTime = touched
	}
	return info, nil
}

// List returns keys in S3's order, which is byte order: what sort.Strings gives.
func (b *Backend) List(ctx context.Context, prefix string) ([]string, error) {
	key, err := b.key(prefix)
	if err != nil {
		return nil, err
	}
	key += "/"
	var out []string
	pages := sdk.NewListObjectsV2Paginator(b.api, &sdk.ListObjectsV2Input{Bucket: &b.bucket, Prefix: &key})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("storage list %s: %w", prefix, err)
		}
		for _, o := range page.Contents {
			out = append(out, strings.TrimPrefix(aws.ToString(o.Key), b.prefix))
		}
	}
	return out, nil
}

func (b *Backend) Delete(ctx context.Context, p string) error {
	key, err := b.key(p)
	if err != nil {
		return err
	}
	if _, err := b.api.DeleteObject(ctx, &sdk.DeleteObjectInput{Bucket: &b.bucket, Key: &key}); err != nil && !notFound(err) {
		return fmt.Errorf("storage delete %s: %w", p, err)
	}
	return nil
}

// Rename is a server-side copy then a delete: dst appears whole at once.
func (b *Backend) Rename(ctx context.Context, src, dst string) error {
	if err := b.copy(ctx, src, dst, "rename"); err != nil {
		return err
	}
	return b.Delete(ctx, src)
}

// touchedKey is user metadata holding when the object was written or last
// touched, by the registry's clock and to the nanosecond. LastModified has
// one-second resolution (an object looks up to 1s older than it is, which
// matters to GC's "untouched since" test) and copying an object onto itself
// renews it on AWS but not on every S3-compatible server. Stat reports the
// later of the two.
const touchedKey = "corral-touched"

func touchedNow() map[string]string {
	return map[string]string{touchedKey: time.Now().UTC().Format(time.RFC3339Nano)}
}

// Touch copies the object onto itself with a new touched time.
func (b *Backend) Touch(ctx context.Context, p string) error {
	return b.copy(ctx, p, p, "touch")
}

func (b *Backend) copy(ctx context.Context, src, dst, what string) error {
	from, err := b.key(src)
	if err != nil {
		return err
	}
	to, err := b.key(dst)
	if err != nil {
		return err
	}
	in := &sdk.CopyObjectInput{Bucket: &b.bucket, Key: &to, CopySource: aws.String(url.PathEscape(b.bucket) + "/" + escapeKey(from))}
	if src == dst {
		in.MetadataDirective = types.MetadataDirectiveReplace // S3 refuses a copy that changes nothing
		in.Metadata = touchedNow()
	}
	_, err = b.api.CopyObject(ctx, in)
	if notFound(err) {
		return storage.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("storage %s %s: %w", what, src, err)
	}
	return nil
}

// escapeKey URL-escapes each segment of a key for CopySource.
func escapeKey(key string) string {
	parts := strings.Split(key, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// PurgeIncomplete aborts multipart uploads under the prefix older than age.
// A registry killed during a pack upload leaves one; so can other tools,
// and buckets bill for them.
func (b *Backend) PurgeIncomplete(ctx context.Context, age time.Duration) (int, error) {
	n := 0
	in := &sdk.ListMultipartUploadsInput{Bucket: &b.bucket, Prefix: aws.String(b.prefix)}
	for {
		out, err := b.api.ListMultipartUploads(ctx, in)
		if err != nil {
			return n, fmt.Errorf("storage purge: %w", err)
		}
		for _, u := range out.Uploads {
			if time.Since(aws.ToTime(u.Initiated)) < age {
				continue
			}
			if _, err := b.api.AbortMultipartUpload(ctx, &sdk.AbortMultipartUploadInput{Bucket: &b.bucket,
				Key: u.Key, UploadId: u.UploadId}); err == nil {
				n++
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return n, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// Usage is unknown for a bucket: it has no fixed size.
func (b *Backend) Usage(context.Context) (int64, int64, error) { return 0, 0, nil }
