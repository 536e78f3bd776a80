//! Validation errors and the stable error codes carried by `error` messages.

use serde::{Deserialize, Serialize};

use crate::limits::{CID_MAX_LEN, MESSAGE_MAX_CHARS, NAME_MAX_CHARS, ROOM_MAX_CHARS};

/// A stable, machine-readable error code. The wire form is the snake_case
/// name (`name_taken`); clients match on it, so existing codes never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// Someone in the room already has this name (compared case-insensitively).
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
    /// A code this client version does not know (sent by a newer server).
    #[serde(other)]
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
            Self::Unknown => "unknown",
        }
    }
}

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
    #[error("a name cannot contain control or invisible formatting characters")]
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
    fn as_str_matches_the_serde_name_of_every_code() {
        let all = [
            ErrorCode::BadRequest,
            ErrorCode::UnsupportedVersion,
            ErrorCode::NotJoined,
            ErrorCode::AlreadyJoined,
            ErrorCode::InvalidName,
            ErrorCode::NameTooLong,
            ErrorCode::NameTaken,
            ErrorCode::InvalidRoom,
            ErrorCode::TooManyRooms,
            ErrorCode::RoomFull,
            ErrorCode::EmptyMessage,
            ErrorCode::TooLong,
            ErrorCode::InvalidText,
            ErrorCode::InvalidCid,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
            ErrorCode::StorageUnavailable,
            ErrorCode::Unknown,
        ];
        for code in all {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
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
