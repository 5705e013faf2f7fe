//! A busybox-static root for the tests that run commands in a container.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// Fill `root` with busybox (every applet a link in /bin), an `app` user
/// (1000:1000, home /home/app) and a `wheel` group.
pub fn fill_layer(root: &Path) {
    for d in ["bin", "etc", "root", "tmp", "home/app"] {
        fs::create_dir_all(root.join(d)).expect("mkdir in layer");
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copying busybox (busybox-static)");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).expect("applet link");
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .expect("passwd");
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
    )
    .expect("group");
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).expect("chown");
}
