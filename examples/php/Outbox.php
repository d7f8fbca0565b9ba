<?php
// spotler-outbox from PHP: one plain INSERT into the outbox table, in the caller's transaction.
//
// Validation is left to the workers: a row they cannot send is parked as `failed` with the
// reason in `last_error` (`spotler-outbox list --status failed`), never lost and never sent.
// A second insert for the same orderid is a no-op, so an order saved many times is sent once.
declare(strict_types=1);

namespace SpotlerOutbox;

use PDO;

final class Outbox
{
    // Every other column has a default. The duplicate clause differs per database; the MySQL
    // one is also accepted by MySQL 8 (INSERT IGNORE would also hide other errors, such as a
    // too-long orderid being cut short).
    private const INSERT = [
        'pgsql' => 'INSERT INTO outbox_events (account, event, orderid, payload)'
            . " VALUES (?, 'Purchase', ?, ?) ON CONFLICT (account, event, orderid) DO NOTHING",
        'mysql' => 'INSERT INTO outbox_events (account, event, orderid, payload)'
            . " VALUES (?, 'Purchase', ?, ?) ON DUPLICATE KEY UPDATE id = id",
        'sqlite' => 'INSERT INTO outbox_events (account, event, orderid, payload)'
            . " VALUES (?, 'Purchase', ?, ?) ON CONFLICT (account, event, orderid) DO NOTHING",
    ];

    public function __construct(private readonly PDO $pdo)
    {
    }

    /**
     * Adds a Purchase event (Spotler's shape: event, email, orderid, products, ...) to the
     * outbox. Call it between the order's beginTransaction() and commit(): the row commits or
     * rolls back with the order. Returns false when the orderid was already in the outbox.
     * $account names the store's Spotler account (SPOTLER_ACCOUNTS_FILE); '' is the default
     * one (SPOTLER_ACCOUNT). Orderids need only be unique within their account.
     *
     * @param array<string, mixed> $event
     */
    public function enqueuePurchase(array $event, string $account = ''): bool
    {
        $driver = $this->pdo->getAttribute(PDO::ATTR_DRIVER_NAME);
        if (!isset(self::INSERT[$driver])) {
            throw new \InvalidArgumentException("spotler-outbox: no outbox on a $driver database");
        }
        $event['event'] = 'Purchase';
        $payload = json_encode($event, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES
            | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
        $statement = $this->pdo->prepare(self::INSERT[$driver]);
        $statement->execute([$account, (string) ($event['orderid'] ?? ''), $payload]);
        return $statement->rowCount() > 0;
    }
}
