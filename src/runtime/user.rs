//! Who a container's command runs as: `-u USER[:GROUP]` or the image's
//! User, looked up in the container's own /etc/passwd and /etc/group.

use std::io;

use nix::unistd::{Gid, Uid};

/// Who the command runs as.
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub home: String,
}

impl Identity {
    /// `USER[:GROUP]`, names or numbers, from the container's /etc/passwd
    /// and /etc/group (docker's rules: an unknown number is used as is).
    pub fn resolve(spec: &str, passwd: &str, group: &str) -> io::Result<Identity> {
        let (user, grp) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let user = if user.is_empty() { "0" } else { user };
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 6 && (f[0] == user || f[2] == user));
        let (name, uid, mut gid, home) = match (&entry, user.parse::<u32>()) {
            (Some(f), _) => (
                f[0].to_string(),
                f[2].parse::<u32>()
                    .map_err(|_| io::Error::other(format!("/etc/passwd: bad uid for {}", f[0])))?,
                f[3].parse::<u32>().unwrap_or(0),
                f[5].to_string(),
            ),
            (None, Ok(n)) => (String::new(), n, 0, "/".to_string()),
            (None, Err(_)) => {
                return Err(io::Error::other(format!(
                    "user {user}: no such user in the image's /etc/passwd"
                )));
            }
        };
        let groups_of = |line: &&str| -> Option<(String, u32, Vec<String>)> {
            let f: Vec<&str> = line.split(':').collect();
            let members = f
                .get(3)
                .map(|m| m.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, members))
        };
        let all_groups: Vec<(String, u32, Vec<String>)> =
            group.lines().filter_map(|l| groups_of(&l)).collect();
        if let Some(g) = grp {
            gid = match all_groups
                .iter()
                .find(|(n, id, _)| n == g || id.to_string() == g)
            {
                Some((_, id, _)) => *id,
                None => g.parse().map_err(|_| {
                    io::Error::other(format!(
                        "group {g}: no such group in the image's /etc/group"
                    ))
                })?,
            };
        }
        let mut groups: Vec<Gid> = vec![Gid::from_raw(gid)];
        if !name.is_empty() {
            for (_, id, members) in &all_groups {
                if members.contains(&name) && *id != gid {
                    groups.push(Gid::from_raw(*id));
                }
            }
        }
        Ok(Identity {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            groups,
            home,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app\nstaff:x:50:\n";

    fn ids(spec: &str) -> (u32, u32, Vec<u32>, String) {
        let i = Identity::resolve(spec, PASSWD, GROUP).unwrap();
        let groups = i.groups.iter().map(|g| g.as_raw()).collect();
        (i.uid.as_raw(), i.gid.as_raw(), groups, i.home)
    }

    #[test]
    fn names_numbers_and_groups() {
        assert_eq!(ids(""), (0, 0, vec![0], "/root".into()));
        assert_eq!(ids("app"), (1000, 1000, vec![1000, 10], "/home/app".into()));
        assert_eq!(
            ids("1000"),
            (1000, 1000, vec![1000, 10], "/home/app".into())
        );
        assert_eq!(
            ids("app:staff"),
            (1000, 50, vec![50, 10], "/home/app".into())
        );
        // Unknown numbers are used as they are, with group 0.
        assert_eq!(ids("4242"), (4242, 0, vec![0], "/".into()));
        assert_eq!(ids("4242:77"), (4242, 77, vec![77], "/".into()));
        assert!(Identity::resolve("nobody", PASSWD, GROUP).is_err());
        assert!(Identity::resolve("app:nogroup", PASSWD, GROUP).is_err());
    }
}
