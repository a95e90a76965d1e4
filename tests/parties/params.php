<?php
// A PHP upstream for tests/no_bypass_fields.rs, run with PHP's built-in server
// (`php -S 127.0.0.1:PORT params.php`): logs, one JSON line per request to the file
// CALLGATE_PARTY_LOG names, the method Laravel would route (`_method`, as Symfony's
// Request::getMethod reads it) and the parameters as PHP read them ($_GET, $_POST).
$override = $_POST['_method'] ?? $_GET['_method'] ?? null;
$method = $_SERVER['REQUEST_METHOD'];
if ($method === 'POST' && is_string($override)) {
    $method = strtoupper($override);
}
$line = json_encode([
    'server' => 'php',
    'method' => $method,
    'path' => parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH),
    'get' => (object) $_GET,
    'post' => (object) $_POST,
    'params' => (object) array_merge($_GET, $_POST),
]);
file_put_contents(getenv('CALLGATE_PARTY_LOG'), $line . "\n", FILE_APPEND | LOCK_EX);
header('Content-Type: application/json');
echo $line;
