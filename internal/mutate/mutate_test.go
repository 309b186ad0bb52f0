package mutate

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const sample = `package p

import (
	"log/slog"
	"time"
)

const limit = 3 + 4

func f(a, b int, ok bool, log *slog.Logger) int {
	x := a + b
	if a < b && !ok {
		x = 0
	}
	x++
	log.Info("x", "x", x)
	slog.Warn("w")
	g()
	s := "a" + "b"
	_ = s
	if err := h(); err != nil && a > 0 {
		log.Warn("h", "err", err)
	} else if b > 0 {
		log.Debug("b")
	}
	time.Sleep(time.Second)
	return x
}

func h() error { return nil }

func g() {}
`

func TestMutantsOfEachKind(t *testing.T) {
	ms, err := Mutants("p.go", []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, strconv.Itoa(m.Line)+" "+m.Op)
	}
	// Nothing in the conditions that only decide a log line, no sleep.
	want := []string{
		"11 + -> -",
		"12 < -> >=", "12 < -> <=", "12 && -> ||", "12 drop !",
		"13 drop x = 0",
		"15 drop x++",
		"18 drop g()",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("mutants:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A dropped assignment still compiles and still evaluates its value.
	for _, m := range ms {
		if m.Op == "drop x = 0" && !strings.Contains(string(m.Src), "\t\t_ = 0\n") {
			t.Fatalf("dropped assignment reads:\n%s", m.Src)
		}
		if m.Op == "&& -> ||" && !strings.Contains(string(m.Src), "a < b || !ok") {
			t.Fatalf("swap reads:\n%s", m.Src)
		}
	}
}

// TestRunKillsWhatTheTestsSee runs the tester over a real package in a
// module of its own: the mutants its test sees are killed, the others
// survive, and the one that does not compile is not counted.
func TestRunKillsWhatTheTestsSee(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/p\n\ngo 1.22\n")
	write("p.go", `package p

func Max(a, b int) int {
	if a > b {
		return a
	}
	return b
}

func Unseen(n int) int {
	n = n * 2
	return n
}

func Broken(s string) string {
	return s + s
}
`)
	write("p_test.go", `package p

import "testing"

func TestMax(t *testing.T) {
	if Max(1, 2) != 2 || Max(3, 2) != 3 {
		t.Fatal("max")
	}
}
`)
	var log strings.Builder
	rs, err := Run(context.Background(), Config{Dir: dir, Jobs: 2, Timeout: 2 * time.Minute, Out: &log})
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	got := map[string]Outcome{}
	for _, r := range rs {
		got[strconv.Itoa(r.Line)+" "+r.Op] = r.Outcome
	}
	want := map[string]Outcome{
		"4 > -> <=":         Killed,
		"4 > -> >=":         Survived, // equal values: no test tells
		"11 * -> /":         Survived,
		"11 drop n = n * 2": Survived,
		"16 + -> -":         Invalid, // strings have no minus
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %s, want %s\n%s", k, got[k], w, log.String())
		}
	}
	if len(got) != len(want) {
		t.Errorf("mutants %v, want %v", got, want)
	}
	sc := Scores(rs)
	total := sc[len(sc)-1]
	if total.Killed != 1 || total.Survived != 3 || total.Invalid != 1 || total.Percent() != 25 {
		t.Fatalf("total %+v", total)
	}
}

// TestMutatePackage is `make mutate`: it runs the tester over the package
// CORRAL_MUTATE_PKG (a directory from the repository's root) and prints
// each mutant and the score per file. CORRAL_MUTATE_FILES (a regexp of
// file names), _SAMPLE (a count), _SEED, _JOBS and _MIN (a score below
// which it fails) narrow it.
func TestMutatePackage(t *testing.T) {
	pkg := os.Getenv("CORRAL_MUTATE_PKG")
	if pkg == "" {
		t.Skip("CORRAL_MUTATE_PKG not set: `make mutate PKG=./internal/...` runs this")
	}
	cfg := Config{Dir: filepath.Join("..", "..", pkg), Out: os.Stdout, Jobs: 1}
	if f := os.Getenv("CORRAL_MUTATE_FILES"); f != "" {
		cfg.Files = regexp.MustCompile(f)
	}
	num := func(name string) int {
		v := os.Getenv(name)
		if v == "" {
			return 0
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return n
	}
	cfg.Sample, cfg.Seed = num("CORRAL_MUTATE_SAMPLE"), uint64(num("CORRAL_MUTATE_SEED"))
	if j := num("CORRAL_MUTATE_JOBS"); j > 0 {
		cfg.Jobs = j
	}
	rs, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	WriteScores(os.Stdout, rs)
	sc := Scores(rs)
	if min := num("CORRAL_MUTATE_MIN"); min > 0 && sc[len(sc)-1].Percent() < float64(min) {
		t.Fatalf("score %.0f%% is under %d%%", sc[len(sc)-1].Percent(), min)
	}
}
