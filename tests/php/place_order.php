<?php
// Runs the shipped Magento observer the way Magento would: the order's INSERT and the
// observer in one PDO transaction. Only the few Magento classes it touches are stood in
// for here (no Magento on the test machines); the observer and Outbox are the shipped files.
//
// usage: php place_order.php DSN USER PASSWORD ORDER_JSON commit|rollback
// prints {"created": true|false} on commit.
declare(strict_types=1);

namespace Magento\Framework\Event {
    interface ObserverInterface
    {
        public function execute(Observer $observer): void;
    }

    class Event
    {
        public function __construct(private readonly object $order)
        {
        }

        public function getOrder(): object
        {
            return $this->order;
        }
    }

    class Observer
    {
        public function __construct(private readonly Event $event)
        {
        }

        public function getEvent(): Event
        {
            return $this->event;
        }
    }
}

namespace Magento\Framework\App {
    // Magento's ResourceConnection::getConnection() is a DB adapter whose getConnection()
    // is the PDO it runs every statement on.
    class ResourceConnection
    {
        public function __construct(private readonly \PDO $pdo)
        {
        }

        public function getConnection(): object
        {
            $pdo = $this->pdo;
            return new class ($pdo) {
                public function __construct(private readonly \PDO $pdo)
                {
                }

                public function getConnection(): \PDO
                {
                    return $this->pdo;
                }
            };
        }
    }
}

namespace {
    require __DIR__ . '/../../examples/php/Outbox.php';
    require __DIR__ . '/../../examples/php/Observer/PurchaseToOutbox.php';

    // What Magento's order model answers, from a plain array.
    final class FakeOrder
    {
        /** @param array<string, mixed> $data */
        public function __construct(private readonly array $data)
        {
        }

        /** @param array<int, mixed> $args */
        public function __call(string $name, array $args): mixed
        {
            $key = strtolower(preg_replace('/(?<!^)[A-Z]/', '_$0', substr($name, 3)));
            if ($key === 'all_visible_items') {
                return array_map(fn (array $item) => new FakeOrder($item), $this->data['items']);
            }
            return $this->data[$key] ?? null;
        }
    }

    [, $dsn, $user, $password, $orderJson, $outcome] = $argv;
    $order = json_decode($orderJson, true, flags: JSON_THROW_ON_ERROR);
    $pdo = new PDO($dsn, $user, $password === '' ? null : $password,
                   [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
    $observer = new SpotlerOutbox\Observer\PurchaseToOutbox(
        new Magento\Framework\App\ResourceConnection($pdo));

    $pdo->beginTransaction();
    // The shop saves its own order row (new, or again on a later state), then Magento
    // dispatches sales_order_save_after.
    $update = $pdo->prepare('UPDATE shop_sales_order SET state = ? WHERE increment_id = ?');
    $update->execute([$order['state'], $order['increment_id']]);
    $exists = $pdo->prepare('SELECT COUNT(*) FROM shop_sales_order WHERE increment_id = ?');
    $exists->execute([$order['increment_id']]);
    if ((int) $exists->fetchColumn() === 0) {
        $pdo->prepare('INSERT INTO shop_sales_order (increment_id, state) VALUES (?, ?)')
            ->execute([$order['increment_id'], $order['state']]);
    }
    $before = (int) $pdo->query('SELECT COUNT(*) FROM outbox_events')->fetchColumn();
    $observer->execute(new Magento\Framework\Event\Observer(
        new Magento\Framework\Event\Event(new FakeOrder($order))));
    $after = (int) $pdo->query('SELECT COUNT(*) FROM outbox_events')->fetchColumn();
    if ($outcome === 'commit') {
        $pdo->commit();
    } else {
        $pdo->rollBack();
    }
    echo json_encode(['created' => $after > $before]), "\n";
}
