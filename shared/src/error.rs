//! Validation errors and the stable error codes carried by `error` messages.

use crate::limits::{CID_MAX_LEN, MESSAGE_MAX_CHARS, NAME_MAX_CHARS, ROOM_MAX_CHARS};
use crate::wire_name::{WireName, serde_by_wire_name};

/// A stable, machine-readable error code. The wire form is the snake_case
/// name (`name_taken`); clients match on it, so existing codes never change.
/// New codes go before `Unknown`, and into [`WireName::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, an unknown `type`, or fields of the wrong shape.
    BadRequest,
    /// `hello` carried a protocol version this server does not speak.
    UnsupportedVersion,
    /// A message other than `hello` arrived before joining.
    NotJoined,
    /// A second `hello` on a connection that already joined.
    AlreadyJoined,
    /// The name is empty after trimming or holds control/invisible characters.
    InvalidName,
    /// The name is longer than [`NAME_MAX_CHARS`].
    NameTooLong,
    /// Someone in the room already has this name, or one that looks the same
    /// (compared without case, composition or look-alike letters).
    NameTaken,
    /// The room name is not 1–32 characters of `[a-z0-9-]`.
    InvalidRoom,
    /// The server holds as many rooms as it is configured for.
    TooManyRooms,
    /// The room holds as many members as it is configured for.
    RoomFull,
    /// The message is empty or only whitespace.
    EmptyMessage,
    /// The message is longer than [`MESSAGE_MAX_CHARS`].
    TooLong,
    /// The message holds control characters other than newline and tab.
    InvalidText,
    /// The client message id is empty, too long or not `[A-Za-z0-9_-]`.
    InvalidCid,
    /// Too many messages too fast; slow down (the connection closes with 1008
    /// if the flood goes on).
    RateLimited,
    /// The server failed; the request may be retried.
    Internal,
    /// History storage failed (disk full, database error); the message was
    /// not stored and should be sent again later.
    StorageUnavailable,
    /// The client's address holds as many joined sessions as the server
    /// allows one address.
    TooManyJoins,
    /// A code this client version does not know (sent by a newer server).
    Unknown,
}

impl ErrorCode {
    /// The wire name of the code, e.g. `"name_taken"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::InvalidName => "invalid_name",
            Self::NameTooLong => "name_too_long",
            Self::NameTaken => "name_taken",
            Self::InvalidRoom => "invalid_room",
            Self::TooManyRooms => "too_many_rooms",
            Self::RoomFull => "room_full",
            Self::EmptyMessage => "empty_message",
            Self::TooLong => "too_long",
            Self::InvalidText => "invalid_text",
            Self::InvalidCid => "invalid_cid",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::StorageUnavailable => "storage_unavailable",
            Self::TooManyJoins => "too_many_joins",
            Self::Unknown => "unknown",
        }
    }
}

impl WireName for ErrorCode {
    const WHAT: &'static str = "error code";
    const ALL: &'static [Self] = &[
        Self::BadRequest,
        Self::UnsupportedVersion,
        Self::NotJoined,
        Self::AlreadyJoined,
        Self::InvalidName,
        Self::NameTooLong,
        Self::NameTaken,
        Self::InvalidRoom,
        Self::TooManyRooms,
        Self::RoomFull,
        Self::EmptyMessage,
        Self::TooLong,
        Self::InvalidText,
        Self::InvalidCid,
        Self::RateLimited,
        Self::Internal,
        Self::StorageUnavailable,
        Self::TooManyJoins,
        Self::Unknown,
    ];
    const FALLBACK: Option<Self> = Some(Self::Unknown);

    fn wire_name(self) -> &'static str {
        self.as_str()
    }
}

serde_by_wire_name!(ErrorCode);

// `ALL` holds every code: as many as there are discriminants up to `Unknown`,
// the last (a test checks each sits at its own discriminant).
const _: () = assert!(ErrorCode::ALL.len() == ErrorCode::Unknown as usize + 1);

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a user-supplied value was refused. Each maps to one [`ErrorCode`];
/// the `Display` text is the human-readable `message` of the error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("a name needs at least one visible character")]
    NameEmpty,
    #[error("a name can be at most {NAME_MAX_CHARS} characters")]
    NameTooLong,
    #[error("a name cannot contain control, invisible or text-direction characters")]
    NameInvalidChar,
    #[error("a room name is 1–{ROOM_MAX_CHARS} characters of a–z, 0–9 and '-'")]
    RoomInvalid,
    #[error("a message needs at least one visible character")]
    MessageEmpty,
    #[error("a message can be at most {MESSAGE_MAX_CHARS} characters")]
    MessageTooLong,
    #[error("a message cannot contain control characters other than newline and tab")]
    MessageInvalidChar,
    #[error("a client message id is 1–{CID_MAX_LEN} characters of A–Z, a–z, 0–9, '_' and '-'")]
    CidInvalid,
}

impl ValidationError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NameEmpty | Self::NameInvalidChar => ErrorCode::InvalidName,
            Self::NameTooLong => ErrorCode::NameTooLong,
            Self::RoomInvalid => ErrorCode::InvalidRoom,
            Self::MessageEmpty => ErrorCode::EmptyMessage,
            Self::MessageTooLong => ErrorCode::TooLong,
            Self::MessageInvalidChar => ErrorCode::InvalidText,
            Self::CidInvalid => ErrorCode::InvalidCid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_by_its_name() {
        crate::wire_name::tests::round_trips(ErrorCode::ALL, |c| c as usize);
        assert_eq!(serde_json::to_string(&ErrorCode::NameTaken).expect("serialize"), r#""name_taken""#);
    }

    #[test]
    fn an_unknown_code_from_a_newer_server_decodes_as_unknown() {
        let code: ErrorCode = serde_json::from_str("\"quota_exceeded\"").expect("decode");
        assert_eq!(code, ErrorCode::Unknown);
    }

    #[test]
    fn every_validation_error_maps_to_its_code() {
        assert_eq!(ValidationError::NameEmpty.code(), ErrorCode::InvalidName);
        assert_eq!(ValidationError::NameInvalidChar.code(), ErrorCode::InvalidName);
        assert_eq!(ValidationError::NameTooLong.code(), ErrorCode::NameTooLong);
        assert_eq!(ValidationError::RoomInvalid.code(), ErrorCode::InvalidRoom);
        assert_eq!(ValidationError::MessageEmpty.code(), ErrorCode::EmptyMessage);
        assert_eq!(ValidationError::MessageTooLong.code(), ErrorCode::TooLong);
        assert_eq!(ValidationError::MessageInvalidChar.code(), ErrorCode::InvalidText);
        assert_eq!(ValidationError::CidInvalid.code(), ErrorCode::InvalidCid);
    }
}
