#!/bin/sh
# build-image.sh OUT_DIR
#
# Builds a tiny QEMU template from Debian packages: the Debian cloud kernel
# and an initramfs with busybox and dropbear. The guest brings up virtio
# networking (10.0.2.15, QEMU user-mode defaults), authorizes the SSH key
# passed on the kernel command line as corral.ssh_key=<base64 of the
# authorized_keys line>, and serves SSH on port 22. A 16 MiB raw disk whose
# first bytes read "corral-template-disk" lets tests check the COW overlay.
#
# Needs apt-get (with package lists), dpkg-deb and readelf (binutils); no root.
set -eu
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "build-image: no linux-image-cloud-amd64 in apt lists (run apt-get update)" >&2; exit 1; }
apt-get download "$kernel_pkg" busybox-static dropbear-bin libtomcrypt1 libtommath1 libgmp10 libcrypt1 zlib1g libc6 >apt.log 2>&1 ||
	{ cat apt.log >&2; exit 1; }
for deb in *.deb; do dpkg-deb -x "$deb" x; done

r=root
mkdir -p $r/bin $r/usr/sbin $r/lib/modules $r/lib/x86_64-linux-gnu $r/lib64 $r/etc/dropbear \
	$r/root/.ssh $r/proc $r/sys $r/dev $r/tmp $r/var/run
cp x/bin/busybox $r/bin/busybox
cp x/usr/sbin/dropbear $r/usr/sbin/dropbear
# Copy dropbear's shared libraries, following NEEDED entries transitively.
todo="libc.so.6 ld-linux-x86-64.so.2 $(readelf -d x/usr/sbin/dropbear | awk '/NEEDED/ {gsub(/[][]/, "", $5); print $5}')"
while [ -n "$todo" ]; do
	set -- $todo
	lib=$1; shift; todo="$*"
	[ -e "$r/lib/x86_64-linux-gnu/$lib" ] && continue
	f=$(find x -name "$lib" | head -n 1)
	[ -n "$f" ] || { echo "build-image: $lib not found" >&2; exit 1; }
	cp -L "$f" "$r/lib/x86_64-linux-gnu/$lib"
	todo="$todo $(readelf -d "$f" | awk '/NEEDED/ {gsub(/[][]/, "", $5); print $5}')"
done
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 $r/lib64/ld-linux-x86-64.so.2
# Load order follows the modules' depends= fields (virtio needs virtio_ring).
mods="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_blk"
for m in $mods; do
	f=$(find x/lib/modules -name "$m.ko" | head -n 1)
	[ -n "$f" ] || { echo "build-image: module $m not found" >&2; exit 1; }
	cp "$f" $r/lib/modules/
done
echo "root:x:0:0:root:/root:/bin/sh" > $r/etc/passwd
echo "root:x:0:" > $r/etc/group
echo "/bin/sh" > $r/etc/shells
chmod 700 $r/root $r/root/.ssh
cat > $r/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $mods; do insmod /lib/modules/\$m.ko || echo "corral: insmod \$m failed" > /dev/console; done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i+1)); done
if [ ! -e /sys/class/net/eth0 ]; then
	{ echo "corral: no eth0; interfaces: \$(ls /sys/class/net)"; cat /proc/modules; dmesg | tail -n 20; } > /dev/console
fi
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
for arg in \$(cat /proc/cmdline); do
	case \$arg in corral.ssh_key=*) echo "\${arg#corral.ssh_key=}" | base64 -d > /root/.ssh/authorized_keys ;; esac
done
chmod 600 /root/.ssh/authorized_keys 2>/dev/null
/usr/sbin/dropbear -R -E -p 22
echo corral-guest-ready > /dev/console
while true; do sleep 3600; done
INIT
chmod 755 $r/init
(cd $r && find . | ../x/bin/busybox cpio -o -H newc 2>/dev/null | ../x/bin/busybox gzip -9) > "$out/initrd.img"
cp x/boot/vmlinuz-* "$out/vmlinuz"
rm -f "$out/disk.raw"
printf 'corral-template-disk' > "$out/disk.raw"
truncate -s 16M "$out/disk.raw"
cat > "$out/config.json" <<CFG
{"name": "tiny-linux", "arch": "amd64", "kernel": "vmlinuz", "initrd": "initrd.img",
 "cmdline": "console=ttyS0 quiet", "disk": "disk.raw", "cpu": 1, "ram_mb": 256}
CFG
echo "built $out"
