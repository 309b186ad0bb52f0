package qemu

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// TemplateConfig is the config.json of a QEMU template. With Kernel set the
// guest boots that kernel directly (with Initrd and Cmdline); otherwise it
// boots from Disk.
type TemplateConfig struct {
	Name    string `json:"name"`
	Arch    string `json:"arch"`
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd"`
	Cmdline string `json:"cmdline"`
	Disk    string `json:"disk"`
	CPU     int    `json:"cpu"`
	RAMMB   int    `json:"ram_mb"`
}

// loadTemplate reads dir's config.json and checks the files it names are
// plain names inside dir.
func loadTemplate(dir string) (TemplateConfig, error) {
	var cfg TemplateConfig
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return cfg, fmt.Errorf("qemu template %s: %w", dir, err)
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return cfg, fmt.Errorf("qemu template %s: config.json: %w", dir, err)
	}
	for field, name := range map[string]string{"kernel": cfg.Kernel, "initrd": cfg.Initrd, "disk": cfg.Disk} {
		if name != "" && (filepath.Base(name) != name || strings.HasPrefix(name, ".")) {
			return cfg, fmt.Errorf("qemu template %s: %s %q must be a file name in the template", dir, field, name)
		}
	}
	if cfg.Kernel == "" && cfg.Disk == "" {
		return cfg, fmt.Errorf("qemu template %s: config.json names neither a kernel nor a disk to boot", dir)
	}
	return cfg, nil
}

// diskFormat guesses a disk's format from its name, as qemu-img needs it.
func diskFormat(name string) string {
	if strings.HasSuffix(name, ".qcow2") {
		return "qcow2"
	}
	return "raw"
}
