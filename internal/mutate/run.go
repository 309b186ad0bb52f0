package mutate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Outcome is what a package's tests made of one mutant.
type Outcome string

const (
	Killed   Outcome = "killed"   // a test failed
	TimedOut Outcome = "timeout"  // the tests ran past the limit: killed too
	Survived Outcome = "SURVIVED" // every test passed
	Invalid  Outcome = "invalid"  // it does not compile: not counted
)

// Result is one mutant's outcome; Failed names the first failing test.
type Result struct {
	Mutant
	Outcome Outcome
	Failed  string
}

// Config is one run over one package.
type Config struct {
	Dir      string         // the package's directory
	Files    *regexp.Regexp // nil: every non-test .go file of the package
	Sample   int            // > 0: this many mutants picked at random (Seed)
	Seed     uint64
	Jobs     int           // mutants tested at once
	Timeout  time.Duration // per mutant; 0: three times the unmutated run and 30 s, at least a minute
	TestArgs []string      // extra `go test` flags, e.g. -run
	Out      io.Writer     // one line per mutant as it ends
}

// Run generates the package's mutants and tests each against the package's
// own tests. The unmutated tests must pass first.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	ms, err := packageMutants(dir, cfg.Files)
	if err != nil {
		return nil, err
	}
	if cfg.Sample > 0 && cfg.Sample < len(ms) {
		r := rand.New(rand.NewPCG(cfg.Seed, 0))
		r.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
		ms = ms[:cfg.Sample]
		sort.SliceStable(ms, func(i, j int) bool {
			if ms[i].File != ms[j].File {
				return ms[i].File < ms[j].File
			}
			return ms[i].Line < ms[j].Line
		})
	}
	tmp, err := os.MkdirTemp("", "corral-mutate-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	began := time.Now()
	if out, err := goTest(ctx, dir, "", cfg.TestArgs, 0); err != nil {
		return nil, fmt.Errorf("mutate: the unmutated tests of %s fail; fix them first: %w\n%s", dir, err, tail(out))
	}
	limit := cfg.Timeout
	if limit == 0 {
		// A mutant that hangs (a loop that never ends) costs this much:
		// three times the unmutated run is room enough on a busy machine.
		limit = max(3*time.Since(began)+30*time.Second, time.Minute)
	}
	if cfg.Out != nil {
		fmt.Fprintf(cfg.Out, "mutate %s: %d mutants, unmutated tests %.1fs, limit %s each\n", dir, len(ms), time.Since(began).Seconds(), limit)
	}

	results := make([]Result, len(ms))
	jobs := max(cfg.Jobs, 1)
	next := make(chan int)
	var wg sync.WaitGroup
	var outMu sync.Mutex
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = testMutant(ctx, dir, tmp, i, ms[i], cfg.TestArgs, limit)
				if cfg.Out != nil {
					outMu.Lock()
					fmt.Fprintln(cfg.Out, line(results[i], dir))
					outMu.Unlock()
				}
			}
		}()
	}
	for i := range ms {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	return results, ctx.Err()
}

// packageMutants lists the mutants of the package's non-test files.
func packageMutants(dir string, files *regexp.Regexp) ([]Mutant, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	var ms []Mutant
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasSuffix(base, "_test.go") || (files != nil && !files.MatchString(base)) {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		if bytes.Contains(src, []byte("// Code generated")) {
			continue
		}
		m, err := Mutants(name, src)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m...)
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("mutate: no mutants in %s", dir)
	}
	return ms, nil
}

// testMutant runs the package's tests with the mutant in place of its file.
func testMutant(ctx context.Context, dir, tmp string, i int, m Mutant, args []string, limit time.Duration) Result {
	src := filepath.Join(tmp, fmt.Sprintf("m%d.go", i))
	overlay := filepath.Join(tmp, fmt.Sprintf("m%d.json", i))
	ov, _ := json.Marshal(map[string]map[string]string{"Replace": {m.File: src}})
	if err := os.WriteFile(src, m.Src, 0o600); err != nil {
		return Result{Mutant: m, Outcome: Invalid, Failed: err.Error()}
	}
	if err := os.WriteFile(overlay, ov, 0o600); err != nil {
		return Result{Mutant: m, Outcome: Invalid, Failed: err.Error()}
	}
	defer os.Remove(src)
	defer os.Remove(overlay)
	out, err := goTest(ctx, dir, overlay, args, limit)
	return classify(m, out, err)
}

var failedTest = regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)

// classify reads `go test`'s verdict on a mutant.
func classify(m Mutant, out []byte, err error) Result {
	r := Result{Mutant: m}
	switch {
	case err == nil:
		r.Outcome = Survived
	case errors.Is(err, context.DeadlineExceeded) || bytes.Contains(out, []byte("panic: test timed out")):
		r.Outcome, r.Failed = TimedOut, "(timed out)"
	case bytes.Contains(out, []byte("[build failed]")) || bytes.Contains(out, []byte("[setup failed]")):
		r.Outcome = Invalid
	default:
		r.Outcome = Killed
		if f := failedTest.FindSubmatch(out); f != nil {
			r.Failed = string(f[1])
		}
	}
	return r
}

// goTest runs `go test` in the package's directory; limit 0: no limit.
func goTest(ctx context.Context, dir, overlay string, args []string, limit time.Duration) ([]byte, error) {
	tctx := ctx
	if limit > 0 {
		var cancel context.CancelFunc
		tctx, cancel = context.WithTimeout(ctx, limit+30*time.Second) // go test's own -timeout answers first
		defer cancel()
	}
	a := []string{"test", "-count=1", "-failfast"}
	if limit > 0 {
		a = append(a, "-timeout", limit.String())
	} else {
		a = append(a, "-timeout", "30m")
	}
	if overlay != "" {
		a = append(a, "-overlay", overlay)
	}
	a = append(append(a, args...), ".")
	cmd := exec.CommandContext(tctx, "go", a...)
	cmd.Dir = dir
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if tctx.Err() != nil && ctx.Err() == nil {
		return out, context.DeadlineExceeded
	}
	return out, err
}

func line(r Result, dir string) string {
	rel, err := filepath.Rel(dir, r.File)
	if err != nil {
		rel = r.File
	}
	s := fmt.Sprintf("%-8s %s:%d:%d %s", r.Outcome, rel, r.Line, r.Col, r.Op)
	if r.Failed != "" {
		s += "  (" + r.Failed + ")"
	}
	return s
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Score is one file's (or the package's) count.
type Score struct {
	File                               string
	Killed, Survived, Invalid, Timeout int
}

// Percent is the share of valid mutants killed (timeouts count as killed).
func (s Score) Percent() float64 {
	n := s.Killed + s.Timeout + s.Survived
	if n == 0 {
		return 100
	}
	return 100 * float64(s.Killed+s.Timeout) / float64(n)
}

// Scores counts results per file, then the total (File "total") last.
func Scores(rs []Result) []Score {
	by := map[string]*Score{}
	total := &Score{File: "total"}
	for _, r := range rs {
		s := by[r.File]
		if s == nil {
			s = &Score{File: r.File}
			by[r.File] = s
		}
		for _, c := range []*Score{s, total} {
			switch r.Outcome {
			case Killed:
				c.Killed++
			case Survived:
				c.Survived++
			case Invalid:
				c.Invalid++
			case TimedOut:
				c.Timeout++
			}
		}
	}
	var out []Score
	for _, s := range by {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].File < out[j].File })
	return append(out, *total)
}

// WriteScores prints the per-file table.
func WriteScores(w io.Writer, rs []Result) {
	fmt.Fprintf(w, "%-40s %7s %9s %8s %8s %6s\n", "file", "killed", "survived", "timeout", "invalid", "score")
	for _, s := range Scores(rs) {
		name := s.File
		if name != "total" {
			name = filepath.Join(filepath.Base(filepath.Dir(name)), filepath.Base(name))
		}
		fmt.Fprintf(w, "%-40s %7d %9d %8d %8d %5.0f%%\n", name, s.Killed, s.Survived, s.Timeout, s.Invalid, s.Percent())
	}
}
