package synthetic

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// cgroupRoot is where cgroup hierarchies are mounted.
var cgroupRoot = "/sys/fs/cgroup"

// limits bound one VM's processes: how many, and their memory.
type limits struct {
	Pids   int
	Memory int64 // bytes
}

// cgroup is a VM's control group: one directory on a cgroup v2 node, one
// per controller (pids, memory) on cgroup v1.
type cgroup struct{ dirs []string }

// newCgroup makes the VM's cgroup with its limits, under corral/.
func newCgroup(name string, lim limits) (*cgroup, error) {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		parent := filepath.Join(cgroupRoot, "corral")
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, err
		}
		// Delegate the controllers to the VMs' groups (the root's too).
		for _, dir := range []string{cgroupRoot, parent} {
			_ = os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+pids +memory"), 0o644)
		}
		c := &cgroup{dirs: []string{filepath.Join(parent, name)}}
		if err := os.Mkdir(c.dirs[0], 0o755); err != nil {
			return nil, err
		}
		if err := c.write("pids.max", strconv.Itoa(lim.Pids)); err != nil {
			c.remove()
			return nil, err
		}
		if err := c.write("memory.max", strconv.FormatInt(lim.Memory, 10)); err != nil {
			c.remove()
			return nil, err
		}
		return c, nil
	}
	c := &cgroup{}
	for ctrl, file := range map[string]string{"pids": "pids.max", "memory": "memory.limit_in_bytes"} {
		base := filepath.Join(cgroupRoot, ctrl)
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
			c.remove()
			return nil, fmt.Errorf("no cgroup %s controller at %s", ctrl, base)
		}
		dir := filepath.Join(base, "corral", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			c.remove()
			return nil, err
		}
		c.dirs = append(c.dirs, dir)
		val := strconv.Itoa(lim.Pids)
		if ctrl == "memory" {
			val = strconv.FormatInt(lim.Memory, 10)
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0o644); err != nil {
			c.remove()
			return nil, fmt.Errorf("cgroup %s: %w", file, err)
		}
	}
	return c, nil
}

func (c *cgroup) write(file, val string) error {
	for _, d := range c.dirs {
		if err := os.WriteFile(filepath.Join(d, file), []byte(val), 0o644); err != nil {
			return fmt.Errorf("cgroup %s: %w", file, err)
		}
	}
	return nil
}

// add moves a process (the VM's init, before it starts anything) in.
func (c *cgroup) add(pid int) error { return c.write("cgroup.procs", strconv.Itoa(pid)) }

// remove deletes the cgroup once its processes are gone (the kernel may
// still be reaping them for a moment after their init exited).
func (c *cgroup) remove() {
	for _, d := range c.dirs {
		for try := 0; ; try++ {
			err := os.Remove(d)
			if err == nil || errors.Is(err, os.ErrNotExist) || !errors.Is(err, syscall.EBUSY) || try == 50 {
				break
			}
			time.Sleep(20 * time.Millisecond) // waiting for the kernel to empty it
		}
	}
}
