//! The AWS service limits tributary works within, each with the page that states it.
//! Every batch, message and attribute the binaries build is sized against these, never
//! against a number written where it is used.

/// Amazon SQS.
pub mod sqs {
    /// Most entries in one `SendMessageBatch`, `DeleteMessageBatch` or
    /// `ChangeMessageVisibilityBatch` call, and most messages one `ReceiveMessage`
    /// returns.
    ///
    /// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html>
    pub const MAX_BATCH_ENTRIES: usize = 10;

    /// Most bytes in one `SendMessageBatch`: every entry's body and message attributes
    /// (name, type and value) together, 256 KiB.
    ///
    /// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html>
    pub const MAX_BATCH_BYTES: usize = 262_144;

    /// Largest message, body plus message attributes: the default (and largest) of a
    /// queue's `MaximumMessageSize`, 256 KiB.
    ///
    /// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html>
    pub const MAX_MESSAGE_BYTES: usize = 262_144;

    /// Most message attributes on one message.
    ///
    /// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-message-metadata.html>
    pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

    /// Longest long-poll wait of one `ReceiveMessage` call, in seconds.
    ///
    /// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html>
    pub const MAX_WAIT_TIME_SECS: u8 = 20;

    /// Longest visibility timeout, in seconds (12 hours).
    ///
    /// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html>
    pub const MAX_VISIBILITY_TIMEOUT_SECS: u64 = 43_200;
}

/// Amazon SNS.
pub mod sns {
    /// Most entries in one `PublishBatch` call.
    ///
    /// <https://docs.aws.amazon.com/sns/latest/api/API_PublishBatch.html>
    pub const MAX_BATCH_ENTRIES: usize = 10;

    /// Largest message, and largest sum of the messages of one batch, 256 KiB.
    ///
    /// <https://docs.aws.amazon.com/sns/latest/api/API_PublishBatch.html>
    pub const MAX_PAYLOAD_BYTES: usize = 262_144;

    /// Longest `MessageDeduplicationId` on a FIFO topic.
    ///
    /// <https://docs.aws.amazon.com/sns/latest/api/API_PublishBatchRequestEntry.html>
    pub const MAX_DEDUPLICATION_ID: usize = 128;
}

/// Amazon DynamoDB Streams.
pub mod dynamodb_streams {
    /// Most records one `GetRecords` call returns.
    ///
    /// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_streams_GetRecords.html>
    pub const MAX_RECORDS_PER_CALL: i32 = 1000;
}
