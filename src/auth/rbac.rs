//! Roles and permissions: the one table that says who may do what.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Agent,
    Admin,
    Owner,
}

impl Role {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Agent => "agent",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Self::Viewer),
            "agent" => Some(Self::Agent),
            "admin" => Some(Self::Admin),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }
}

/// Everything an endpoint can require. Named for what it protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read customers, contacts, deals, activities, payments.
    CrmRead,
    /// Create and update them.
    CrmWrite,
    /// Archive them.
    CrmArchive,
    /// List users.
    UsersRead,
    /// Create users, change roles, deactivate (never beyond one's own role).
    UsersManage,
    /// Read the audit log.
    AuditRead,
    /// See and operate the appliance (status, backups).
    SystemManage,
}

impl Permission {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrmRead => "crm:read",
            Self::CrmWrite => "crm:write",
            Self::CrmArchive => "crm:archive",
            Self::UsersRead => "users:read",
            Self::UsersManage => "users:manage",
            Self::AuditRead => "audit:read",
            Self::SystemManage => "system:manage",
        }
    }
}

/// The table. Roles are ordered: each has what the one below it has.
#[must_use]
pub fn allows(role: Role, permission: Permission) -> bool {
    let needed = match permission {
        Permission::CrmRead => Role::Viewer,
        Permission::CrmWrite | Permission::CrmArchive => Role::Agent,
        Permission::UsersRead
        | Permission::UsersManage
        | Permission::AuditRead
        | Permission::SystemManage => Role::Admin,
    };
    role >= needed
}

/// Whether `actor` may give `target` to someone (or change someone who has
/// `target`): admins manage agents and viewers and other admins; only owners
/// create or change owners.
#[must_use]
pub fn may_assign(actor: Role, target: Role) -> bool {
    allows(actor, Permission::UsersManage) && (actor == Role::Owner || target != Role::Owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(role: Role, allowed: &[Permission]) {
        let all = [
            Permission::CrmRead,
            Permission::CrmWrite,
            Permission::CrmArchive,
            Permission::UsersRead,
            Permission::UsersManage,
            Permission::AuditRead,
            Permission::SystemManage,
        ];
        for p in all {
            assert_eq!(allows(role, p), allowed.contains(&p), "{role:?} {p:?}");
        }
    }

    #[test]
    fn viewer_reads() {
        check(Role::Viewer, &[Permission::CrmRead]);
    }
    #[test]
    fn agent_works_the_crm() {
        check(
            Role::Agent,
            &[
                Permission::CrmRead,
                Permission::CrmWrite,
                Permission::CrmArchive,
            ],
        );
    }
    #[test]
    fn admin_and_owner_do_everything() {
        for role in [Role::Admin, Role::Owner] {
            check(
                role,
                &[
                    Permission::CrmRead,
                    Permission::CrmWrite,
                    Permission::CrmArchive,
                    Permission::UsersRead,
                    Permission::UsersManage,
                    Permission::AuditRead,
                    Permission::SystemManage,
                ],
            );
        }
    }
    #[test]
    fn only_owners_make_owners() {
        assert!(may_assign(Role::Owner, Role::Owner));
        assert!(!may_assign(Role::Admin, Role::Owner));
        assert!(may_assign(Role::Admin, Role::Admin));
        assert!(!may_assign(Role::Agent, Role::Viewer));
    }
}
